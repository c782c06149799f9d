// Lint rules that carry the design's process boundaries: the verifier and the
// keyless runtime must not reach into governor internals.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

const noGovernor = {
  group: ["**/governor/**", "!**/governor/boundary.js"],
  message:
    "runtime/ and quarantine/ talk to the governor only through the boundary contract (governor/boundary.ts).",
};
const verifierOnlyArtifacts = {
  group: ["**/governor/**", "**/runtime/**", "**/quarantine/**", "**/cli/**"],
  message: "artifacts/ (and the standalone verifier) import nothing from the gateway.",
};

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "coverage/**", "scratch/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { parserOptions: { projectService: false } },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "no-constant-condition": ["error", { checkLoops: false }],
    },
  },
  {
    files: ["artifacts/**/*.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: [verifierOnlyArtifacts] }] },
  },
  {
    files: ["runtime/**/*.ts", "quarantine/**/*.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: [noGovernor] }] },
  },
);
