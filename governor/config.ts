/**
 * Governor configuration: an embedded default, optionally overridden by a
 * JSON file. Unknown keys are errors, so a typo never silently falls back to
 * a default.
 */
import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { Ajv2020 } from "ajv/dist/2020.js";
import { CmcpError, isCmcpError } from "../artifacts/errors.js";
import { parseJson } from "../artifacts/strict-json.js";

export interface GovernorConfig {
  /** Where the receipt chain, checkpoints and claims live. */
  dataDir: string;
  log: {
    /** Checkpoint origin line: names this log to witnesses and auditors. */
    origin: string;
  };
  checkpoint: { everyReceipts: number; everySeconds: number };
  /** How long SIGTERM waits for in-flight calls before the final checkpoint. */
  drainTimeoutSeconds: number;
}

export function defaultConfig(): GovernorConfig {
  return {
    dataDir: ".cmcp-data",
    log: { origin: `cmcp.local/${hostname().replace(/[^A-Za-z0-9.-]/g, "-") || "governor"}` },
    checkpoint: { everyReceipts: 1000, everySeconds: 60 },
    drainTimeoutSeconds: 10,
  };
}

const schema = {
  type: "object",
  additionalProperties: false,
  properties: {
    dataDir: { type: "string", minLength: 1, maxLength: 4096 },
    log: {
      type: "object",
      additionalProperties: false,
      properties: {
        origin: { type: "string", minLength: 1, maxLength: 256, pattern: "^[\\x21-\\x7e][\\x20-\\x7e]*$" },
      },
    },
    checkpoint: {
      type: "object",
      additionalProperties: false,
      properties: {
        everyReceipts: { type: "integer", minimum: 1, maximum: 10000000 },
        everySeconds: { type: "integer", minimum: 0, maximum: 86400 },
      },
    },
    drainTimeoutSeconds: { type: "integer", minimum: 0, maximum: 3600 },
  },
} as const;

const validate = new Ajv2020({ strict: true, allErrors: true }).compile(schema);

/** Config files are small; anything larger is a mistake. */
const MAX_CONFIG_BYTES = 1024 * 1024;

export async function loadConfig(path?: string): Promise<GovernorConfig> {
  const base = defaultConfig();
  if (!path) return base;
  let value: unknown;
  try {
    value = parseJson(await readFile(path), { maxBytes: MAX_CONFIG_BYTES, maxDepth: 32 });
  } catch (err) {
    const why = isCmcpError(err) ? err.message : ((err as NodeJS.ErrnoException).code ?? String(err));
    throw new CmcpError("config.read", `cannot read config ${path}: ${why}`);
  }
  if (!validate(value)) {
    const problems = (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message}`).join("; ");
    throw new CmcpError("config.invalid", `config ${path} is invalid: ${problems}`);
  }
  const v = value as Partial<GovernorConfig>;
  return {
    dataDir: v.dataDir ?? base.dataDir,
    log: { ...base.log, ...v.log },
    checkpoint: { ...base.checkpoint, ...v.checkpoint },
    drainTimeoutSeconds: v.drainTimeoutSeconds ?? base.drainTimeoutSeconds,
  };
}
