import { UriTemplate } from "@modelcontextprotocol/sdk/shared/uriTemplate.js";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MAX_URI_LENGTH, compileTemplate, templateCovers, uriProblem } from "../../runtime/uri-template.js";

const covers = (template: string, uri: string) => {
  const steps = compileTemplate(template);
  if (!steps) throw new Error(`template ${template} does not parse`);
  return templateCovers(steps, uri);
};

describe("URI template coverage", () => {
  it("covers what each expression kind allows, and nothing past it", () => {
    expect(covers("notes://items/{id}", "notes://items/42")).toBe(true);
    expect(covers("notes://items/{id}", "notes://items/")).toBe(false);
    expect(covers("notes://items/{id}", "notes://items/4/2")).toBe(false);
    expect(covers("notes://items/{id}", "notes://items/42?x=1")).toBe(false);
    expect(covers("notes://items/{id}", "notes://other/42")).toBe(false);
    expect(covers("repo://{owner}/{name}", "repo://a/b")).toBe(true);
    expect(covers("file:///srv/{+path}", "file:///srv/a/b/c.txt")).toBe(true);
    expect(covers("doc://x{#section}", "doc://x#intro")).toBe(true);
    expect(covers("doc://x{/a}{/b}", "doc://x/one/two")).toBe(true);
    expect(covers("host://{sub}.example{.tld}", "host://www.example.org")).toBe(true);
    expect(covers("q://find{?term,page}", "q://find")).toBe(true);
    expect(covers("q://find{?term,page}", "q://find?term=a&page=2")).toBe(true);
    expect(covers("q://find{?term}", "q://find?term=a#frag")).toBe(false);
    expect(covers("plain://no-expressions", "plain://no-expressions")).toBe(true);
  });

  it("agrees with the SDK's matcher on ordinary templates and URIs", () => {
    const cases: [string, string][] = [
      ["notes://items/{id}", "notes://items/42"],
      ["notes://items/{id}", "notes://items/4/2"],
      ["repo://{owner}/{name}/issues", "repo://a/b/issues"],
      ["repo://{owner}/{name}/issues", "repo://a/issues"],
      ["file:///srv/{+path}", "file:///srv/a/b"],
      ["file:///srv/{+path}", "file:///other"],
    ];
    for (const [t, u] of cases) expect(covers(t, u), `${t} ${u}`).toBe(new UriTemplate(t).match(u) !== null);
  });

  it("covers no URI with a dot segment, an encoded slash, control characters, or over the length limit", () => {
    for (const uri of [
      "file:///srv/../etc/passwd",
      "file:///srv/a/./b",
      "file:///srv/%2e%2e/etc",
      "file:///srv/a%2fb",
      "file:///srv/a\\b",
      "file:///srv/a\nb",
      "file:///srv/a b",
      `file:///srv/${"a".repeat(MAX_URI_LENGTH)}`,
    ]) {
      expect(uriProblem(uri), uri).not.toBeNull();
      expect(covers("file:///srv/{+path}", uri), uri).toBe(false);
    }
    expect(uriProblem("file:///srv/a..b/c")).toBeNull();
  });

  it("refuses templates it cannot parse: they cover nothing", () => {
    for (const t of ["x://{", "x://}", "x://{}", "x://{a b}", "x://{a}}", "", "x".repeat(2000)])
      expect(compileTemplate(t), t).toBeNull();
  });

  it("stays linear where the SDK's regular expression backtracks", () => {
    // Three {+} expressions over a long run of slashes: seconds for a backtracking matcher.
    const steps = compileTemplate("repo://{+owner}/{+repo}/{+path}")!;
    const uri = `repo://${"/".repeat(MAX_URI_LENGTH - 20)}x`;
    for (let i = 0; i < 50; i++) expect(templateCovers(steps, uri)).toBe(true);
    expect(templateCovers(compileTemplate("a{x}{y}{z}{w}b")!, `a${"-".repeat(2000)}c`)).toBe(false);
  });

  it("never throws on arbitrary templates and URIs", () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[a-z:/{}+#.?&;,*0-9 ]{0,40}$/),
        fc.string({ maxLength: 256 }),
        (t, u) => {
          const steps = compileTemplate(t);
          if (steps) templateCovers(steps, u);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
