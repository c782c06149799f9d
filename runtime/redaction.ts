/**
 * Applies a decision's redaction targets: `arg:/json/pointer` (an argument;
 * `arg:` alone, all of them) before the call goes upstream, and
 * `result:/json/pointer` (part of the result; `result:` alone, all content)
 * before the result reaches the agent. Pointers follow RFC 6901; one that
 * does not resolve leaves the value as it is. Data-class targets (`class:`)
 * never reach the runtime: the governor refuses the call while it cannot
 * classify data. Inputs are never modified in place.
 */
export const REDACTED = "[redacted by cmcp policy]";

type Json = Record<string, unknown>;

/** RFC 6901 reference tokens; null for a malformed pointer. */
function tokens(pointer: string): string[] | null {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) return null;
  return pointer
    .slice(1)
    .split("/")
    .map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function isContainer(v: unknown): v is Json | unknown[] {
  return typeof v === "object" && v !== null;
}

/** A copy of `root` with the value at `path` replaced, when the path resolves. */
function replaceAt(root: unknown, path: string[], value: unknown): unknown {
  if (path.length === 0) return value;
  if (!isContainer(root)) return root;
  const [head, ...rest] = path as [string, ...string[]];
  if (Array.isArray(root)) {
    if (!/^(0|[1-9][0-9]*)$/.test(head)) return root;
    const i = Number(head);
    if (i >= root.length) return root;
    const copy = root.slice();
    copy[i] = replaceAt(root[i], rest, value);
    return copy;
  }
  if (!Object.prototype.hasOwnProperty.call(root, head)) return root;
  return { ...root, [head]: replaceAt(root[head], rest, value) };
}

function targetsOf(targets: readonly string[], prefix: "arg:" | "result:"): string[][] {
  const out: string[][] = [];
  for (const t of targets) {
    if (!t.startsWith(prefix)) continue;
    const path = tokens(t.slice(prefix.length));
    if (path) out.push(path);
  }
  return out;
}

/** tools/call params with the targeted arguments replaced. */
export function redactArguments(params: Json, targets: readonly string[]): Json {
  const paths = targetsOf(targets, "arg:");
  if (paths.length === 0 || !isContainer(params.arguments) || Array.isArray(params.arguments)) return params;
  let args = params.arguments as Json;
  for (const path of paths) {
    args =
      path.length === 0
        ? Object.fromEntries(Object.keys(args).map((k) => [k, REDACTED]))
        : (replaceAt(args, path, REDACTED) as Json);
  }
  return { ...params, arguments: args };
}

/** Every piece of content replaced, keeping the result's shape (tool result, resource contents, prompt messages). */
function redactAll(result: Json): Json {
  const { structuredContent: _structured, ...rest } = result;
  if (Array.isArray(rest.contents))
    return {
      ...rest,
      contents: rest.contents.map((c) => ({
        uri: isContainer(c) && typeof (c as Json).uri === "string" ? (c as Json).uri : "",
        mimeType: "text/plain",
        text: REDACTED,
      })),
    };
  if (Array.isArray(rest.messages))
    return {
      ...rest,
      messages: rest.messages.map((m) => ({
        role: isContainer(m) && (m as Json).role === "assistant" ? "assistant" : "user",
        content: { type: "text", text: REDACTED },
      })),
    };
  return { ...rest, content: [{ type: "text", text: REDACTED }] };
}

/** A result with the targeted parts replaced; `result:` alone replaces all content. */
export function redactResult(result: Json, targets: readonly string[]): Json {
  const paths = targetsOf(targets, "result:");
  let out = result;
  for (const path of paths) {
    if (path.length === 0) out = redactAll(out);
    else out = replaceAt(out, path, REDACTED) as Json;
  }
  return out;
}
