#!/usr/bin/env node
/** Entry point of the `cmcp` binary; the program itself is in main.ts. */
import { main } from "./main.js";

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`cmcp: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
