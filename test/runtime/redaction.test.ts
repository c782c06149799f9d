import { describe, expect, it } from "vitest";
import { REDACTED, redactArguments, redactResult } from "../../runtime/redaction.js";

describe("redaction targets", () => {
  it("replaces the arguments a pointer names, with RFC 6901 escapes, and nothing else", () => {
    const params = {
      name: "t",
      arguments: { a: 1, "x/y": { "m~n": "secret", keep: true }, list: ["p", "q"] },
    };
    const out = redactArguments(params, [
      "arg:/x~1y/m~0n",
      "arg:/list/1",
      "arg:/missing/deep",
      "arg:/list/7",
    ]);
    expect(out).toEqual({
      name: "t",
      arguments: { a: 1, "x/y": { "m~n": REDACTED, keep: true }, list: ["p", REDACTED] },
    });
    // The input is untouched: the governor already hashed it.
    expect(params.arguments["x/y"]["m~n"]).toBe("secret");
    expect(redactArguments(params, ["arg:"]).arguments).toEqual({
      a: REDACTED,
      "x/y": REDACTED,
      list: REDACTED,
    });
    expect(redactArguments(params, ["result:/a", "class:pii", "arg:no-slash"])).toBe(params);
    expect(redactArguments({ name: "t" }, ["arg:"])).toEqual({ name: "t" });
  });

  it("replaces result parts, or all content while keeping the result's shape", () => {
    const tool = { content: [{ type: "text", text: "42" }], structuredContent: { v: 42 }, isError: false };
    expect(redactResult(tool, ["result:/structuredContent/v"])).toEqual({
      ...tool,
      structuredContent: { v: REDACTED },
    });
    expect(redactResult(tool, ["result:"])).toEqual({
      content: [{ type: "text", text: REDACTED }],
      isError: false,
    });
    expect(redactResult({ contents: [{ uri: "file:///a", blob: "AAAA" }] }, ["result:"])).toEqual({
      contents: [{ uri: "file:///a", mimeType: "text/plain", text: REDACTED }],
    });
    expect(
      redactResult({ messages: [{ role: "assistant", content: { type: "text", text: "x" } }] }, ["result:"]),
    ).toEqual({ messages: [{ role: "assistant", content: { type: "text", text: REDACTED } }] });
    expect(redactResult(tool, ["arg:/a", "result:/nope/0"])).toEqual(tool);
  });
});
