#!/usr/bin/env node
/** Entry point of the `cmcp` binary; the program itself is in main.ts. */
import { main } from "./main.js";

// A reader that stops early (`cmcp status | head`) is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`cmcp: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
