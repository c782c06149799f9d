/**
 * JSON-RPC errors the gateway itself returns to agents: stable codes in the
 * implementation-defined server-error range, with a message that says why.
 */
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { isCmcpError } from "../artifacts/errors.js";
import { UpstreamRpcError } from "./upstream-connector.js";

export const RpcCode = {
  /** The policy decided against the request (enforcing mode). */
  denied: -32010,
  /** The governor did not answer or is gone: nothing is forwarded without a decision. */
  governorUnavailable: -32011,
  upstreamUnavailable: -32012,
  upstreamTimeout: -32013,
  responseTooLarge: -32014,
  /** Response inspection blocked the content. */
  blocked: -32015,
  /** The agent asked for a tool, prompt or resource no upstream offers. */
  unknownTarget: -32602,
  cancelled: -32016,
  sessionRefused: -32017,
  /** A call held for approval was denied, or no approver answered in time. */
  approvalRefused: -32018,
} as const;

export function rpcError(code: number, message: string, data?: unknown): McpError {
  return new McpError(code, message, data);
}

/** Maps any failure on the path to an upstream to one JSON-RPC error for the agent. */
export function toRpcError(err: unknown, server: string): McpError {
  if (err instanceof McpError) return err;
  if (err instanceof UpstreamRpcError) return new McpError(err.code, err.message, err.data);
  if (isCmcpError(err)) {
    switch (err.code) {
      case "governor.timeout":
      case "governor.unavailable":
      case "governor.bad-reply":
        return rpcError(
          RpcCode.governorUnavailable,
          `refused: the governor could not decide (${err.message})`,
        );
      case "upstream.timeout":
        return rpcError(RpcCode.upstreamTimeout, `upstream ${server} did not answer in time`);
      case "upstream.response-too-large":
        return rpcError(
          RpcCode.responseTooLarge,
          `upstream ${server} sent a response larger than allowed; it was dropped`,
        );
      case "upstream.cancelled":
        return rpcError(RpcCode.cancelled, "request cancelled");
      case "upstream.disconnected":
      case "upstream.connect-failed":
      case "upstream.connect-timeout":
        return rpcError(RpcCode.upstreamUnavailable, `upstream ${server} is unavailable: ${err.message}`);
      default:
        // Governor-side refusals (unknown session, bad params) fail the call closed too.
        return rpcError(RpcCode.governorUnavailable, `refused: ${err.message}`);
    }
  }
  return rpcError(
    RpcCode.upstreamUnavailable,
    `upstream ${server} failed: ${err instanceof Error ? err.message : String(err)}`,
  );
}
