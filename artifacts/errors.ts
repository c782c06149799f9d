/**
 * Typed local faults. Every error raised by cmcp code carries a stable string
 * code (dotted, lowercase) so callers and tests match on the code, never on
 * the message text.
 */
export class CmcpError extends Error {
  readonly code: string;
  readonly detail: Record<string, unknown> | undefined;

  constructor(code: string, message: string, detail?: Record<string, unknown>, options?: ErrorOptions) {
    super(message, options);
    this.name = "CmcpError";
    this.code = code;
    this.detail = detail;
  }
}

export function isCmcpError(err: unknown, code?: string): err is CmcpError {
  return err instanceof CmcpError && (code === undefined || err.code === code);
}
