/**
 * The one place cmcp loads cedar-wasm (the Node.js build). Importing it
 * through here first turns off V8's inlining of JS-to-Wasm calls: with it on,
 * Node 20's V8 (11.3) aborted the process ("Fatal error ... unreachable
 * code" in Deoptimizer::DoComputeBuiltinContinuation) when an optimized
 * caller of a cedar-wasm function was lazily deoptimized during the call,
 * reproducibly after a second bundle was loaded in a warm process. The
 * flag only affects code optimized from now on, which is all of it: nothing
 * has called into cedar-wasm before this module's body runs.
 */
import { setFlagsFromString } from "node:v8";

setFlagsFromString("--no-turbo-inline-js-wasm-calls");

export {
  isAuthorized,
  policySetTextToParts,
  policyToJson,
  preparsePolicySet,
  preparseSchema,
  schemaToJson,
  statefulIsAuthorized,
  validate,
} from "@cedar-policy/cedar-wasm/nodejs";
