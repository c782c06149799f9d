/**
 * Whether a URI is covered by an RFC 6570 URI template, decided in linear
 * time: the template becomes a sequence of steps (literals, runs of allowed
 * characters, optional tails) simulated over every input position at once,
 * never a backtracking regular expression (the SDK's UriTemplate.match takes
 * seconds on a few kilobytes with two `{+x}` expressions).
 *
 * Coverage is deliberately narrower than the RFC's expansion: a simple
 * `{x}` (and `{/x}`, `{.x}`) matches one non-empty path segment without
 * `/ ? #`; `{+x}` and `{#x}` match any non-empty text; `{?x}`, `{&x}`,
 * `{;x}` match an optional tail up to `#`. A URI with control characters or
 * spaces, a dot segment (`.`, `..`, also percent-encoded), an encoded `/` or
 * `\`, or over MAX_URI_LENGTH is covered by no template. A template that does
 * not parse, or is over MAX_TEMPLATE_LENGTH, covers nothing.
 */

export const MAX_URI_LENGTH = 2048;
export const MAX_TEMPLATE_LENGTH = 1024;

type Step =
  | { kind: "literal"; text: string }
  /** One or more characters that `allowed` accepts. */
  | { kind: "run"; allowed: (c: string) => boolean }
  /** Optionally: the prefix character, then any characters up to `#`. */
  | { kind: "tail"; prefix: string };

const segmentChar = (c: string) => c !== "/" && c !== "?" && c !== "#";
const labelChar = (c: string) => segmentChar(c) && c !== ".";
const anyChar = () => true;

export type TemplateSteps = readonly Step[];

/** The steps of a template, or null when it does not parse. */
export function compileTemplate(template: string): TemplateSteps | null {
  if (template.length === 0 || template.length > MAX_TEMPLATE_LENGTH) return null;
  const steps: Step[] = [];
  let i = 0;
  while (i < template.length) {
    const open = template.indexOf("{", i);
    const literalEnd = open < 0 ? template.length : open;
    if (template.slice(i, literalEnd).includes("}")) return null;
    if (literalEnd > i) steps.push({ kind: "literal", text: template.slice(i, literalEnd) });
    if (open < 0) break;
    const close = template.indexOf("}", open);
    if (close < 0) return null;
    const body = template.slice(open + 1, close);
    const first = body.charAt(0);
    const op = first !== "" && "+#/.?&;".includes(first) ? first : "";
    const names = body.slice(op.length);
    if (!/^[A-Za-z0-9_%.]+(?::[1-9][0-9]{0,3}|\*)?(?:,[A-Za-z0-9_%.]+(?::[1-9][0-9]{0,3}|\*)?)*$/.test(names))
      return null;
    switch (op) {
      case "":
        steps.push({ kind: "run", allowed: segmentChar });
        break;
      case "+":
        steps.push({ kind: "run", allowed: anyChar });
        break;
      case "#":
        steps.push({ kind: "literal", text: "#" }, { kind: "run", allowed: anyChar });
        break;
      case "/":
        steps.push({ kind: "literal", text: "/" }, { kind: "run", allowed: segmentChar });
        break;
      case ".":
        steps.push({ kind: "literal", text: "." }, { kind: "run", allowed: labelChar });
        break;
      default:
        steps.push({ kind: "tail", prefix: op });
    }
    i = close + 1;
  }
  return steps;
}

/** Why a URI can be covered by no template, or null. */
export function uriProblem(uri: string): string | null {
  if (uri.length === 0 || uri.length > MAX_URI_LENGTH)
    return `longer than ${MAX_URI_LENGTH} characters or empty`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0020\u007f-\u009f\\]/.test(uri)) return "control characters, spaces or backslashes";
  if (/%(?:2f|5c|00)/i.test(uri)) return "an encoded slash, backslash or NUL";
  const path = uri.split(/[?#]/, 1)[0]!;
  if (path.split("/").some((seg) => /^(?:\.|%2e){1,2}$/i.test(seg))) return "a dot segment";
  return null;
}

/** Whether the compiled template covers the URI; linear in URI length times template steps. */
export function templateCovers(steps: TemplateSteps, uri: string): boolean {
  if (uriProblem(uri) !== null) return false;
  const n = uri.length;
  // Positions reachable after the steps so far.
  let at = new Uint8Array(n + 1);
  at[0] = 1;
  for (const step of steps) {
    const next = new Uint8Array(n + 1);
    if (step.kind === "literal") {
      for (let p = 0; p + step.text.length <= n; p++)
        if (at[p] && uri.startsWith(step.text, p)) next[p + step.text.length] = 1;
    } else if (step.kind === "run") {
      // A run may start at any reachable position and extend while characters are allowed.
      let live = false;
      for (let p = 0; p < n; p++) {
        if (!step.allowed(uri[p]!)) live = false;
        else {
          if (at[p]) live = true;
          if (live) next[p + 1] = 1;
        }
      }
    } else {
      let live = false;
      for (let p = 0; p <= n; p++) {
        if (at[p]) next[p] = 1;
        if (p === n) break;
        if (uri[p] === "#") live = false;
        else if (at[p] && uri[p] === step.prefix) live = true;
        if (live) next[p + 1] = 1;
      }
    }
    at = next;
  }
  return at[n] === 1;
}
