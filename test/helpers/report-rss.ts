// Preloaded into CLI children by tests: reports peak resident memory (KiB) on exit.
process.on("exit", () => {
  process.stderr.write(`\ncmcp-test-maxrss-kb=${process.resourceUsage().maxRSS}\n`);
});
