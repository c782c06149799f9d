// Snapshots the tool definitions of real MCP servers from npm into benign/<server>.json (round 1),
// round-2/benign/<server>.json (round 2, a held-out set of servers not in round 1) or
// round-3/benign/<server>.json (round 3, a second held-out set, in neither round 1 nor round 2) or
// round-4/benign/<server>.json (round 4, a third held-out set, in none of rounds 1 to 3).
// Run from the repository root: node --import tsx test/vectors/tool-corpus/snapshot-servers.ts [options]
//   --round N       which pinned list to snapshot: 1 (default, SERVERS), 2 (ROUND_2_SERVERS), 3
//                   (ROUND_3_SERVERS) or 4 (ROUND_4_SERVERS)
//   --only a,b      snapshot only these servers of the round (by `name` below, including ones marked `skip`)
//   --scratch DIR   install directory (default: $TMPDIR/cmcp-tool-corpus, outside the repository)
//   --all           also try the servers marked `skip` (known to fail offline)
//   --list          print the round's pinned list and exit
// Each server is installed into its own prefix under the scratch directory (reused on rerun when the
// pinned version is already there), started over stdio with the official SDK client, and asked for
// tools/list (following cursors). A server that fails is reported and skipped.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { z } from "zod";

export interface ServerSpec {
  /** Safe file name of the snapshot (<round's directory>/<name>.json); unique across rounds. */
  name: string;
  /** npm package and exact version. */
  pkg: string;
  version: string;
  /** Which bin of the package to start (default: the only one, or the one named like the package). */
  bin?: string;
  args?: string[];
  /** Dummy values for servers that need a key only to start; never real credentials. */
  env?: Record<string, string>;
  /** Dummy files (path relative to the server's sandbox: content) written before it starts. */
  files?: Record<string, string>;
  /** Run install scripts (default false). */
  scripts?: boolean;
  /** Known not to list tools on this machine (offline, no native builds): why. Tried only with --all. */
  skip?: string;
}

// Dummy credential used wherever a server insists on a key to start.
const DUMMY = "dummy-not-a-real-key-0000";

// For a server that rejects keys containing "key" or "api".
const DUMMY_NO_WORDS = "dummy0000.notreal0000";

// Dummy Google OAuth client and (unexpired) tokens, for servers that read them from files to start.
const GOOGLE_OAUTH_CLIENT = {
  installed: {
    client_id: "0000-dummy.apps.googleusercontent.com",
    client_secret: DUMMY,
    redirect_uris: ["http://127.0.0.1:9"],
  },
};
const GOOGLE_TOKENS = {
  access_token: DUMMY,
  refresh_token: DUMMY,
  token_type: "Bearer",
  scope: "",
  expiry_date: Date.UTC(2100, 0, 1),
};

// Scratch-relative placeholder replaced at run time in args and env values: the server's sandbox.
const SANDBOX = "${SANDBOX}";

/** Round 1: the servers of the frozen corpus in benign/. */
export const SERVERS: ServerSpec[] = [
  { name: "server-everything", pkg: "@modelcontextprotocol/server-everything", version: "2026.8.31" },
  {
    name: "server-filesystem",
    pkg: "@modelcontextprotocol/server-filesystem",
    version: "2026.8.31",
    args: [SANDBOX],
  },
  { name: "server-memory", pkg: "@modelcontextprotocol/server-memory", version: "2026.8.31" },
  {
    name: "server-sequential-thinking",
    pkg: "@modelcontextprotocol/server-sequential-thinking",
    version: "2026.8.31",
  },
  {
    name: "server-github",
    pkg: "@modelcontextprotocol/server-github",
    version: "2025.4.8",
    env: { GITHUB_PERSONAL_ACCESS_TOKEN: DUMMY },
  },
  {
    name: "server-gitlab",
    pkg: "@modelcontextprotocol/server-gitlab",
    version: "2025.4.25",
    env: { GITLAB_PERSONAL_ACCESS_TOKEN: DUMMY, GITLAB_API_URL: "http://127.0.0.1:9/api/v4" },
  },
  {
    name: "server-slack",
    pkg: "@modelcontextprotocol/server-slack",
    version: "2025.4.25",
    env: { SLACK_BOT_TOKEN: "xoxb-" + DUMMY, SLACK_TEAM_ID: "T00000000" },
  },
  {
    name: "server-brave-search",
    pkg: "@modelcontextprotocol/server-brave-search",
    version: "0.6.2",
    env: { BRAVE_API_KEY: DUMMY },
  },
  {
    name: "server-google-maps",
    pkg: "@modelcontextprotocol/server-google-maps",
    version: "0.6.2",
    env: { GOOGLE_MAPS_API_KEY: DUMMY },
  },
  {
    name: "server-postgres",
    pkg: "@modelcontextprotocol/server-postgres",
    version: "0.6.2",
    args: ["postgresql://127.0.0.1:9/none"],
  },
  {
    name: "server-redis",
    pkg: "@modelcontextprotocol/server-redis",
    version: "2025.4.25",
    args: ["redis://127.0.0.1:9"],
    skip: "connects to Redis before answering initialize; needs a live Redis server",
  },
  {
    name: "server-puppeteer",
    pkg: "@modelcontextprotocol/server-puppeteer",
    version: "2025.5.12",
    env: { PUPPETEER_SKIP_DOWNLOAD: "1", PUPPETEER_SKIP_CHROMIUM_DOWNLOAD: "1" },
  },
  {
    name: "server-aws-kb-retrieval",
    pkg: "@modelcontextprotocol/server-aws-kb-retrieval",
    version: "0.6.2",
    env: { AWS_ACCESS_KEY_ID: "AKIA0000DUMMY", AWS_SECRET_ACCESS_KEY: DUMMY, AWS_REGION: "us-east-1" },
  },
  {
    name: "server-everart",
    pkg: "@modelcontextprotocol/server-everart",
    version: "0.6.2",
    env: { EVERART_API_KEY: DUMMY },
  },
  {
    name: "playwright-mcp",
    pkg: "@playwright/mcp",
    version: "0.0.83",
    env: { PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: "1" },
  },
  {
    name: "notion-mcp-server",
    pkg: "@notionhq/notion-mcp-server",
    version: "2.5.2",
    env: { NOTION_TOKEN: "ntn_" + DUMMY },
  },
  {
    name: "firecrawl-mcp",
    pkg: "firecrawl-mcp",
    version: "3.26.0",
    env: { FIRECRAWL_API_KEY: "fc-" + DUMMY },
  },
  { name: "tavily-mcp", pkg: "tavily-mcp", version: "0.2.22", env: { TAVILY_API_KEY: "tvly-" + DUMMY } },
  { name: "exa-mcp-server", pkg: "exa-mcp-server", version: "3.4.1", env: { EXA_API_KEY: DUMMY } },
  { name: "context7-mcp", pkg: "@upstash/context7-mcp", version: "4.1.1" },
  { name: "mcp-server-kubernetes", pkg: "mcp-server-kubernetes", version: "4.1.7" },
  { name: "desktop-commander", pkg: "@wonderwhy-er/desktop-commander", version: "0.2.52" },
  { name: "chrome-devtools-mcp", pkg: "chrome-devtools-mcp", version: "1.11.0" },
  {
    name: "mongodb-mcp-server",
    pkg: "mongodb-mcp-server",
    version: "3.0.4",
    env: { MDB_MCP_TELEMETRY: "disabled" },
  },
  {
    name: "airtable-mcp-server",
    pkg: "airtable-mcp-server",
    version: "1.14.0",
    env: { AIRTABLE_API_KEY: "pat" + DUMMY },
  },
  {
    name: "supabase-mcp-server",
    pkg: "@supabase/mcp-server-supabase",
    version: "0.13.0",
    args: ["--access-token", "sbp_" + DUMMY],
    skip: "tools/list fetches from the Supabase API (no network here)",
  },
  {
    name: "sentry-mcp-server",
    pkg: "@sentry/mcp-server",
    version: "0.39.0",
    args: ["--access-token", DUMMY],
  },
  {
    name: "heroku-mcp-server",
    pkg: "@heroku/mcp-server",
    version: "1.2.8",
    env: { HEROKU_API_KEY: DUMMY },
    skip: "imports an SDK path without extension that the resolved SDK no longer exports (ERR_MODULE_NOT_FOUND)",
  },
  {
    name: "figma-developer-mcp",
    pkg: "figma-developer-mcp",
    version: "0.13.2",
    args: ["--stdio"],
    env: { FIGMA_API_KEY: DUMMY },
  },
  {
    name: "zereight-mcp-gitlab",
    pkg: "@zereight/mcp-gitlab",
    version: "2.1.64",
    env: { GITLAB_PERSONAL_ACCESS_TOKEN: DUMMY, GITLAB_API_URL: "http://127.0.0.1:9/api/v4" },
  },
  { name: "antv-mcp-server-chart", pkg: "@antv/mcp-server-chart", version: "0.9.10" },
  {
    name: "circleci-mcp-server",
    pkg: "@circleci/mcp-server-circleci",
    version: "0.20.0",
    env: { CIRCLECI_TOKEN: DUMMY },
  },
  {
    name: "azure-devops-mcp",
    pkg: "@azure-devops/mcp",
    version: "2.10.0",
    args: ["dummy-org"],
    skip: "needs the native keytar module, whose install script downloads a prebuilt binary",
  },
  { name: "eslint-mcp", pkg: "@eslint/mcp", version: "0.3.13" },
  {
    name: "brave-search-mcp-server",
    pkg: "@brave/brave-search-mcp-server",
    version: "2.1.4",
    env: { BRAVE_API_KEY: DUMMY },
  },
  {
    name: "datadog-mcp-server",
    pkg: "@winor30/mcp-server-datadog",
    version: "1.8.0",
    env: { DATADOG_API_KEY: DUMMY, DATADOG_APP_KEY: DUMMY },
  },
  {
    name: "hubspot-mcp-server",
    pkg: "@hubspot/mcp-server",
    version: "0.4.0",
    env: { PRIVATE_APP_ACCESS_TOKEN: "pat-na1-" + DUMMY },
  },
  {
    name: "stripe-mcp",
    pkg: "@stripe/mcp",
    version: "0.3.3",
    args: ["--tools=all", "--api-key=sk_test_" + DUMMY],
    skip: "proxies tools/list to Stripe's hosted MCP endpoint (no network here)",
  },
  { name: "shortcut-mcp", pkg: "@shortcut/mcp", version: "0.25.0", env: { SHORTCUT_API_TOKEN: DUMMY } },
  { name: "n8n-mcp", pkg: "n8n-mcp", version: "2.87.0", env: { MCP_MODE: "stdio", LOG_LEVEL: "error" } },
  {
    name: "launchdarkly-mcp-server",
    pkg: "@launchdarkly/mcp-server",
    version: "0.6.2",
    args: ["start", "--api-key", "api-" + DUMMY],
  },
  {
    name: "executeautomation-playwright-mcp-server",
    pkg: "@executeautomation/playwright-mcp-server",
    version: "1.0.12",
    env: { PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: "1" },
  },
  {
    name: "dbhub",
    pkg: "@bytebase/dbhub",
    version: "1.4.0",
    args: ["--transport", "stdio", "--dsn", "sqlite:///:memory:"],
    skip: "needs node:sqlite (Node 22+) or a reachable database before it starts",
  },
  {
    name: "perplexity-mcp-server",
    pkg: "@perplexity-ai/mcp-server",
    version: "1.2.1",
    env: { PERPLEXITY_API_KEY: "pplx-" + DUMMY },
  },
  { name: "mcp-server-code-runner", pkg: "mcp-server-code-runner", version: "0.1.8" },
  {
    name: "atlassian-jira-mcp",
    pkg: "@aashari/mcp-server-atlassian-jira",
    version: "3.3.0",
    env: {
      ATLASSIAN_SITE_NAME: "dummy",
      ATLASSIAN_USER_EMAIL: "dummy@example.invalid",
      ATLASSIAN_API_TOKEN: DUMMY,
    },
  },
];

/**
 * Round 2: a held-out set of servers, none of them in round 1 (checked at run time), pinned to the
 * latest version on the day they were chosen, before any round-2 measurement.
 */
export const ROUND_2_SERVERS: ServerSpec[] = [
  {
    name: "server-gdrive",
    pkg: "@modelcontextprotocol/server-gdrive",
    version: "2025.1.14",
    env: { GDRIVE_CREDENTIALS_PATH: SANDBOX + "/credentials.json" },
    files: { "credentials.json": JSON.stringify(GOOGLE_TOKENS) },
  },
  {
    name: "lark-mcp",
    pkg: "@larksuiteoapi/lark-mcp",
    version: "0.5.1",
    args: ["mcp", "-a", "cli_dummy0000", "-s", DUMMY],
  },
  {
    name: "amap-maps-mcp-server",
    pkg: "@amap/amap-maps-mcp-server",
    version: "0.0.8",
    env: { AMAP_MAPS_API_KEY: DUMMY },
  },
  {
    name: "baidu-map-mcp-server",
    pkg: "@baidumap/mcp-server-baidu-map",
    version: "1.0.5",
    env: { BAIDU_MAP_API_KEY: DUMMY },
  },
  {
    name: "line-bot-mcp-server",
    pkg: "@line/line-bot-mcp-server",
    version: "0.5.0",
    env: { CHANNEL_ACCESS_TOKEN: DUMMY, DESTINATION_USER_ID: "U00000000000000000000000000000000" },
  },
  {
    name: "mapbox-mcp-server",
    pkg: "@mapbox/mcp-server",
    version: "0.14.0",
    env: { MAPBOX_ACCESS_TOKEN: "pk." + DUMMY },
  },
  { name: "pinecone-mcp", pkg: "@pinecone-database/mcp", version: "0.3.0", env: { PINECONE_API_KEY: DUMMY } },
  {
    name: "elasticsearch-mcp-server",
    pkg: "@elastic/mcp-server-elasticsearch",
    version: "0.3.1",
    env: { ES_URL: "http://127.0.0.1:9", ES_API_KEY: DUMMY },
  },
  {
    name: "neon-mcp-server",
    pkg: "@neondatabase/mcp-server-neon",
    version: "0.6.5",
    args: ["start", DUMMY],
    skip: "npm install fetches a dependency tarball from GitHub (only the npm registry is reachable)",
  },
  {
    name: "upstash-mcp-server",
    pkg: "@upstash/mcp-server",
    version: "0.3.0",
    args: ["run", "dummy@example.invalid", DUMMY],
    env: { UPSTASH_EMAIL: "dummy@example.invalid", UPSTASH_API_KEY: DUMMY },
    skip: "calls the Upstash API before it starts (no network here)",
  },
  {
    name: "twilio-mcp",
    pkg: "@twilio-alpha/mcp",
    version: "0.7.0",
    args: ["AC00000000000000000000000000000000/SK00000000000000000000000000000000:" + DUMMY],
  },
  {
    name: "lara-mcp",
    pkg: "@translated/lara-mcp",
    version: "1.0.6",
    env: { LARA_ACCESS_KEY_ID: DUMMY, LARA_ACCESS_KEY_SECRET: DUMMY },
  },
  {
    name: "apify-actors-mcp-server",
    pkg: "@apify/actors-mcp-server",
    version: "0.16.0",
    env: { APIFY_TOKEN: DUMMY },
    skip: "refuses to start on Node 20 (needs Node 22+)",
  },
  { name: "currents-mcp", pkg: "@currents/mcp", version: "2.1.1", env: { CURRENTS_API_KEY: DUMMY } },
  { name: "browsermcp", pkg: "@browsermcp/mcp", version: "0.1.3" },
  {
    name: "monday-api-mcp",
    pkg: "@mondaydotcomorg/monday-api-mcp",
    version: "3.3.0",
    args: ["-t", DUMMY],
  },
  { name: "ms-365-mcp-server", pkg: "@softeria/ms-365-mcp-server", version: "0.155.0" },
  {
    name: "google-calendar-mcp",
    pkg: "@cocal/google-calendar-mcp",
    version: "2.6.3",
    env: {
      GOOGLE_OAUTH_CREDENTIALS: SANDBOX + "/gcp-oauth.keys.json",
      GOOGLE_CALENDAR_MCP_TOKEN_PATH: SANDBOX + "/tokens.json",
    },
    files: {
      "gcp-oauth.keys.json": JSON.stringify(GOOGLE_OAUTH_CLIENT),
      // Tokens are stored per account; "normal" is the default account.
      "tokens.json": JSON.stringify({ normal: GOOGLE_TOKENS }),
    },
  },
  {
    name: "salesforce-mcp",
    pkg: "@salesforce/mcp",
    version: "0.30.15",
    args: ["--orgs", "DEFAULT_TARGET_ORG", "--toolsets", "all"],
    skip: "its undici needs zlib zstd (Node 22.15+) and crashes on load",
  },
  {
    name: "asana-mcp-server",
    pkg: "@roychri/mcp-server-asana",
    version: "1.8.0",
    env: { ASANA_ACCESS_TOKEN: DUMMY },
  },
  {
    name: "postman-mcp-server",
    pkg: "@postman/postman-mcp-server",
    version: "2.13.0",
    env: { POSTMAN_API_KEY: "PMAK-" + DUMMY },
  },
  { name: "mui-mcp", pkg: "@mui/mcp", version: "0.1.6" },
  { name: "drawio-mcp", pkg: "@drawio/mcp", version: "1.6.1" },
  { name: "mobile-mcp", pkg: "@mobilenext/mobile-mcp", version: "1.0.4" },
  { name: "cloudbase-mcp", pkg: "@cloudbase/cloudbase-mcp", version: "2.34.6" },
  { name: "codacy-mcp", pkg: "@codacy/codacy-mcp", version: "0.5.9", env: { CODACY_ACCOUNT_TOKEN: DUMMY } },
  { name: "hostinger-api-mcp", pkg: "hostinger-api-mcp", version: "1.63.2", env: { API_TOKEN: DUMMY } },
  { name: "instantdb-mcp", pkg: "@instantdb/mcp", version: "1.0.67", args: ["--token", DUMMY] },
  { name: "shopify-dev-mcp", pkg: "@shopify/dev-mcp", version: "1.16.0" },
  { name: "netlify-mcp", pkg: "@netlify/mcp", version: "1.15.1" },
  { name: "nx-mcp", pkg: "nx-mcp", version: "0.25.0", args: [SANDBOX] },
  {
    name: "replicate-mcp",
    pkg: "replicate-mcp",
    version: "0.9.0",
    env: { REPLICATE_API_TOKEN: "r8_" + DUMMY },
  },
  { name: "todoist-mcp", pkg: "@doist/todoist-mcp", version: "11.0.0", env: { TODOIST_API_KEY: DUMMY } },
  { name: "airbnb-mcp-server", pkg: "@openbnb/mcp-server-airbnb", version: "0.3.0" },
  { name: "brightdata-mcp", pkg: "@brightdata/mcp", version: "2.11.3", env: { API_TOKEN: DUMMY } },
  {
    name: "zai-mcp-server",
    pkg: "@z_ai/mcp-server",
    version: "0.1.5",
    env: { Z_AI_API_KEY: DUMMY_NO_WORDS },
  },
  {
    name: "cloudflare-mcp-server",
    pkg: "@cloudflare/mcp-server-cloudflare",
    version: "0.2.0",
    args: ["run", "00000000000000000000000000000000"],
    env: { CLOUDFLARE_API_TOKEN: DUMMY },
  },
  {
    name: "auth0-mcp-server",
    pkg: "@auth0/auth0-mcp-server",
    version: "0.1.0-beta.19",
    args: ["run"],
    skip: "needs the native keytar module, whose install script downloads a prebuilt binary",
  },
  { name: "googlemaps-code-assist-mcp", pkg: "@googlemaps/code-assist-mcp", version: "0.2.1" },
  { name: "cloud-run-mcp", pkg: "@google-cloud/cloud-run-mcp", version: "1.10.0" },
  {
    name: "argocd-mcp",
    pkg: "argocd-mcp",
    version: "0.9.0",
    args: ["stdio"],
    env: { ARGOCD_BASE_URL: "http://127.0.0.1:9", ARGOCD_API_TOKEN: DUMMY },
  },
  { name: "kazuph-mcp-fetch", pkg: "@kazuph/mcp-fetch", version: "1.6.3" },
  {
    name: "mcp-server-sqlite-npx",
    pkg: "mcp-server-sqlite-npx",
    version: "0.8.0",
    args: [SANDBOX + "/db.sqlite"],
    skip: "needs the native sqlite3 module, whose install script downloads a prebuilt binary",
  },
  {
    name: "mcp-server-mysql",
    pkg: "@benborla29/mcp-server-mysql",
    version: "2.0.9",
    env: {
      MYSQL_HOST: "127.0.0.1",
      MYSQL_PORT: "9",
      MYSQL_USER: "dummy",
      MYSQL_PASS: DUMMY,
      MYSQL_DB: "dummy",
    },
    skip: "tests its MySQL connection at startup and exits when it fails; needs a live MySQL server",
  },
  {
    name: "gmail-autoauth-mcp",
    pkg: "@gongrzhe/server-gmail-autoauth-mcp",
    version: "1.1.11",
    env: {
      GMAIL_OAUTH_PATH: SANDBOX + "/gcp-oauth.keys.json",
      GMAIL_CREDENTIALS_PATH: SANDBOX + "/credentials.json",
    },
    files: {
      "gcp-oauth.keys.json": JSON.stringify(GOOGLE_OAUTH_CLIENT),
      "credentials.json": JSON.stringify(GOOGLE_TOKENS),
    },
  },
  {
    name: "browserbase-mcp",
    pkg: "@browserbasehq/mcp-server-browserbase",
    version: "2.4.3",
    env: { BROWSERBASE_API_KEY: DUMMY, BROWSERBASE_PROJECT_ID: "dummy", GEMINI_API_KEY: DUMMY },
  },
  {
    name: "youtube-transcript-mcp",
    pkg: "@kimtaeyoon83/mcp-server-youtube-transcript",
    version: "0.1.1",
  },
  { name: "mcp-webresearch", pkg: "@mzxrai/mcp-webresearch", version: "0.1.7" },
  {
    name: "freee-mcp",
    pkg: "freee-mcp",
    version: "0.35.2",
    env: { FREEE_CLIENT_ID: "dummy", FREEE_CLIENT_SECRET: DUMMY },
  },
  { name: "mcp-mermaid", pkg: "mcp-mermaid", version: "0.4.1" },
  { name: "browser-tools-mcp", pkg: "@agentdeskai/browser-tools-mcp", version: "2.0.2" },
  {
    name: "magic-21st",
    pkg: "@21st-dev/magic",
    version: "0.2.3",
    env: { API_KEY: DUMMY },
    skip: "proxies everything to 21st.dev's hosted MCP endpoint (no network here)",
  },
  {
    name: "dynatrace-mcp-server",
    pkg: "@dynatrace-oss/dynatrace-mcp-server",
    version: "2.1.2",
    env: { DT_ENVIRONMENT: "https://dummy.apps.dynatrace.com" },
    skip: "its undici needs webidl markAsUncloneable (newer Node than 20) and crashes on load",
  },
  {
    name: "tacticlaunch-mcp-linear",
    pkg: "@tacticlaunch/mcp-linear",
    version: "1.4.3",
    env: { LINEAR_API_TOKEN: "lin_api_" + DUMMY },
  },
];

/**
 * Round 3: a second held-out set of servers, none of them in round 1 or round 2 (checked at run
 * time), pinned to the latest version on the day they were chosen, before any round-3 measurement.
 */
export const ROUND_3_SERVERS: ServerSpec[] = [
  {
    name: "browserstack-mcp-server",
    pkg: "@browserstack/mcp-server",
    version: "1.4.2",
    env: { BROWSERSTACK_USERNAME: "dummy", BROWSERSTACK_ACCESS_KEY: DUMMY },
  },
  { name: "mastra-mcp-docs-server", pkg: "@mastra/mcp-docs-server", version: "1.2.27" },
  {
    name: "smartbear-mcp",
    pkg: "@smartbear/mcp",
    version: "0.41.0",
    env: { BUGSNAG_AUTH_TOKEN: DUMMY, SWAGGER_API_KEY: DUMMY, REFLECT_API_TOKEN: DUMMY },
    skip: "imports enableCompileCache from node:module (Node 22.1+) and crashes on load",
  },
  {
    name: "rollbar-mcp-server",
    pkg: "@rollbar/mcp-server",
    version: "0.6.0",
    env: { ROLLBAR_ACCESS_TOKEN: DUMMY },
  },
  { name: "google-cloud-observability-mcp", pkg: "@google-cloud/observability-mcp", version: "0.2.3" },
  { name: "google-cloud-storage-mcp", pkg: "@google-cloud/storage-mcp", version: "0.6.0" },
  {
    name: "digitalocean-mcp",
    pkg: "@digitalocean/mcp",
    version: "1.0.70",
    env: { DIGITALOCEAN_API_TOKEN: DUMMY },
  },
  {
    name: "xero-mcp-server",
    pkg: "@xeroapi/xero-mcp-server",
    version: "0.0.17",
    env: { XERO_CLIENT_ID: "dummy", XERO_CLIENT_SECRET: DUMMY },
  },
  {
    name: "coingecko-mcp",
    pkg: "@coingecko/coingecko-mcp",
    version: "8.2.0",
    env: { COINGECKO_DEMO_API_KEY: DUMMY, COINGECKO_ENVIRONMENT: "demo" },
    skip: "npm install fetches a dependency tarball from GitHub (only the npm registry is reachable)",
  },
  {
    name: "telnyx-mcp",
    pkg: "telnyx-mcp",
    version: "7.17.0",
    env: { TELNYX_API_KEY: DUMMY },
    skip: "npm install fetches a dependency tarball from GitHub (only the npm registry is reachable)",
  },
  { name: "iterable-mcp", pkg: "@iterable/mcp", version: "1.9.0", env: { ITERABLE_API_KEY: DUMMY } },
  { name: "resend-mcp", pkg: "resend-mcp", version: "2.22.0", env: { RESEND_API_KEY: "re_" + DUMMY } },
  {
    name: "backlog-mcp-server",
    pkg: "backlog-mcp-server",
    version: "0.20.4",
    env: { BACKLOG_DOMAIN: "dummy.backlog.com", BACKLOG_API_KEY: DUMMY },
  },
  {
    name: "chatwork-mcp-server",
    pkg: "@chatwork/mcp-server",
    version: "0.0.4",
    env: { CHATWORK_API_TOKEN: DUMMY },
  },
  {
    name: "alibabacloud-devops-mcp-server",
    pkg: "alibabacloud-devops-mcp-server",
    version: "0.3.64",
    env: { YUNXIAO_ACCESS_TOKEN: DUMMY },
  },
  {
    name: "minimax-mcp-js",
    pkg: "minimax-mcp-js",
    version: "0.0.18",
    env: { MINIMAX_API_KEY: DUMMY, MINIMAX_API_HOST: "https://api.minimax.io" },
  },
  {
    name: "variflight-mcp",
    pkg: "@variflight-ai/variflight-mcp",
    version: "1.0.3",
    env: { VARIFLIGHT_API_KEY: DUMMY },
  },
  {
    name: "semi-mcp",
    pkg: "@douyinfe/semi-mcp",
    version: "1.0.22",
    skip: "requests semi.design at startup and exits when that fails (no network here)",
  },
  {
    name: "mastergo-magic-mcp",
    pkg: "@mastergo/magic-mcp",
    version: "0.1.2",
    args: ["--token=" + DUMMY],
  },
  {
    name: "hf-mcp-server",
    pkg: "@llmindset/hf-mcp-server",
    version: "0.4.23",
    env: { HF_TOKEN: "hf_" + DUMMY },
  },
  {
    name: "infisical-mcp",
    pkg: "@infisical/mcp",
    version: "0.0.24",
    env: {
      INFISICAL_UNIVERSAL_AUTH_CLIENT_ID: "dummy",
      INFISICAL_UNIVERSAL_AUTH_CLIENT_SECRET: DUMMY,
      INFISICAL_HOST_URL: "http://127.0.0.1:9",
    },
  },
  {
    name: "doppler-mcp",
    pkg: "@dopplerhq/mcp-server",
    version: "1.0.5",
    env: { DOPPLER_TOKEN: "dp.pt." + DUMMY },
    skip: "checks its token against the Doppler API at startup and exits when that fails (no network here)",
  },
  { name: "checkpoint-quantum-management-mcp", pkg: "@chkp/quantum-management-mcp", version: "1.4.10" },
  {
    name: "fr24api-mcp",
    pkg: "@flightradar24/fr24api-mcp",
    version: "1.0.2",
    env: { FR24_API_KEY: DUMMY },
  },
  { name: "server-pdf", pkg: "@modelcontextprotocol/server-pdf", version: "2.0.4", args: ["--stdio"] },
  {
    name: "clarity-mcp-server",
    pkg: "@microsoft/clarity-mcp-server",
    version: "2.0.1",
    args: ["--clarity_api_token=" + DUMMY],
  },
  {
    name: "cloudinary-asset-management-mcp",
    pkg: "@cloudinary/asset-management-mcp",
    version: "0.11.0",
    bin: "mcp",
    args: ["start"],
    env: { CLOUDINARY_URL: "cloudinary://000000000000000:" + DUMMY + "@dummy" },
  },
  {
    name: "deepl-mcp-server",
    pkg: "deepl-mcp-server",
    version: "0.1.3-beta.0",
    env: { DEEPL_API_KEY: DUMMY },
  },
  {
    name: "plane-mcp-server",
    pkg: "@makeplane/plane-mcp-server",
    version: "0.1.5",
    env: { PLANE_API_KEY: DUMMY, PLANE_WORKSPACE_SLUG: "dummy", PLANE_API_HOST_URL: "http://127.0.0.1:9" },
  },
  { name: "discourse-mcp", pkg: "@discourse/mcp", version: "0.3.1" },
  {
    name: "kentico-management-api-mcp",
    pkg: "@kentico/management-api-mcp",
    version: "31.8.4",
    env: { MANAGEMENT_API_URL: "http://127.0.0.1:9", MANAGEMENT_API_SECRET: DUMMY + DUMMY },
    skip: "builds its tools from the OpenAPI spec of a running Xperience host app; lists none without one",
  },
  {
    name: "commercetools-commerce-mcp",
    pkg: "@commercetools/commerce-mcp",
    version: "4.1.0",
    skip: "npm install fails: its dependency @commercetools/checkout-sdk@^1.0.0 has no matching version (ETARGET)",
  },
  {
    name: "home-assistant-mcp",
    pkg: "@coolver/home-assistant-mcp",
    version: "3.2.31",
    env: { HA_AGENT_URL: "http://127.0.0.1:9", HA_AGENT_KEY: DUMMY },
    skip: "checks its connection to the HA Vibecode Agent add-on at startup and exits when it fails",
  },
  {
    name: "metabase-mcp-server",
    pkg: "@cognitionai/metabase-mcp-server",
    version: "2.2.0",
    env: { METABASE_URL: "http://127.0.0.1:9", METABASE_API_KEY: DUMMY },
  },
  { name: "jina-mcp-tools", pkg: "jina-mcp-tools", version: "1.2.3", env: { JINA_API_KEY: "jina_" + DUMMY } },
  { name: "transloadit-mcp", pkg: "@transloadit/mcp-server", version: "0.3.31" },
  {
    name: "glean-local-mcp-server",
    pkg: "@gleanwork/local-mcp-server",
    version: "0.7.6",
    env: { GLEAN_INSTANCE: "dummy", GLEAN_API_TOKEN: DUMMY },
  },
  {
    name: "henkey-postgres-mcp-server",
    pkg: "@henkey/postgres-mcp-server",
    version: "1.0.7",
    args: ["--connection-string", "postgresql://127.0.0.1:9/none"],
  },
  { name: "openzeppelin-contracts-mcp", pkg: "@openzeppelin/contracts-mcp", version: "0.7.1" },
  { name: "open-meteo-mcp-server", pkg: "open-meteo-mcp-server", version: "2.1.0" },
];

// Dummy kubeconfig for a server that needs one to start; the cluster address is unreachable on purpose.
const DUMMY_KUBECONFIG = [
  "apiVersion: v1",
  "kind: Config",
  "clusters:",
  "- name: dummy",
  "  cluster:",
  "    server: https://127.0.0.1:9",
  "contexts:",
  "- name: dummy",
  "  context:",
  "    cluster: dummy",
  "    user: dummy",
  "current-context: dummy",
  "users:",
  "- name: dummy",
  "  user:",
  "    token: " + DUMMY,
  "",
].join("\n");

/**
 * Round 4: a third held-out set of servers, none of them in rounds 1 to 3 (checked at run time),
 * pinned to the latest version on the day they were chosen, before any round-4 measurement.
 */
export const ROUND_4_SERVERS: ServerSpec[] = [
  {
    name: "next-devtools-mcp",
    pkg: "next-devtools-mcp",
    version: "0.4.0",
    env: { NEXT_TELEMETRY_DISABLED: "1" },
  },
  {
    name: "svelte-mcp",
    pkg: "@sveltejs/mcp",
    version: "0.1.26",
    skip: "requests svelte.dev at startup and exits when that fails (no network here)",
  },
  { name: "remotion-mcp", pkg: "@remotion/mcp", version: "4.0.527" },
  { name: "knip-mcp", pkg: "@knip/mcp", version: "0.0.36" },
  {
    name: "kubb-mcp",
    pkg: "@kubb/mcp",
    version: "5.2.0",
    skip: "imports glob from node:fs/promises (Node 22+) and crashes on load",
  },
  {
    name: "pandacss-mcp",
    pkg: "@pandacss/mcp",
    version: "1.12.1",
    files: { "panda.config.mjs": "export default {};\n" },
  },
  {
    name: "chakra-ui-react-mcp",
    pkg: "@chakra-ui/react-mcp",
    version: "2.1.1",
    skip: "fetches component examples at startup and exits when that fails (no network here)",
  },
  { name: "react-aria-mcp", pkg: "@react-aria/mcp", version: "1.2.1" },
  { name: "kendo-react-mcp", pkg: "@progress/kendo-react-mcp", version: "1.1.2" },
  { name: "siemens-element-mcp", pkg: "@siemens/element-mcp", version: "51.1.0-v.2.0.3" },
  { name: "hcc-pf-mcp", pkg: "@redhat-cloud-services/hcc-pf-mcp", version: "0.6.0" },
  {
    name: "coinbase-cds-mcp-server",
    pkg: "@coinbase/cds-mcp-server",
    version: "9.28.0",
    bin: "cds-mcp-server",
    env: { DISABLE_CDS_MCP_TELEMETRY: "1" },
  },
  { name: "gcloud-mcp", pkg: "@google-cloud/gcloud-mcp", version: "0.5.3" },
  {
    name: "kubernetes-mcp-server",
    pkg: "kubernetes-mcp-server",
    version: "0.0.67",
    args: ["--kubeconfig", SANDBOX + "/kubeconfig"],
    files: { kubeconfig: DUMMY_KUBECONFIG },
  },
  { name: "opentofu-mcp-server", pkg: "@opentofu/opentofu-mcp-server", version: "0.1.5" },
  { name: "runpod-mcp-server", pkg: "@runpod/mcp-server", version: "4.0.0", env: { RUNPOD_API_KEY: DUMMY } },
  {
    name: "fabric-mcp",
    pkg: "@microsoft/fabric-mcp",
    version: "1.4.0",
    skip: "npm install leaves out its linux-x64 binary package (the other platform packages it lists are not on the registry), so it cannot start",
  },
  { name: "powerpipe-mcp", pkg: "@turbot/powerpipe-mcp", version: "0.1.0", args: [SANDBOX] },
  {
    name: "supabase-mcp-server-postgrest",
    pkg: "@supabase/mcp-server-postgrest",
    version: "0.2.0",
    args: ["--apiUrl", "http://127.0.0.1:9", "--apiKey", DUMMY, "--schema", "public"],
  },
  {
    name: "falkordb-mcpserver",
    pkg: "@falkordb/mcpserver",
    version: "1.3.0",
    env: { FALKORDB_HOST: "127.0.0.1", FALKORDB_PORT: "9" },
    skip: "keeps trying to connect to FalkorDB before answering initialize; needs a live FalkorDB server",
  },
  { name: "excel-mcp-server", pkg: "@negokaz/excel-mcp-server", version: "0.12.0" },
  {
    name: "paddle-mcp",
    pkg: "@paddle/paddle-mcp",
    version: "0.1.6",
    args: ["--api-key=" + DUMMY, "--environment=sandbox"],
  },
  { name: "creem-mcp", pkg: "creem", version: "1.13.0", bin: "mcp", args: ["start", "--api-key", DUMMY] },
  {
    name: "whop-mcp",
    pkg: "@whop/mcp",
    version: "0.0.6",
    env: { WHOP_API_KEY: DUMMY },
    skip: "npm install fetches a dependency tarball from GitHub (only the npm registry is reachable)",
  },
  {
    name: "tosspayments-integration-guide-mcp",
    pkg: "@tosspayments/integration-guide-mcp",
    version: "0.0.31",
    skip: "requests docs.tosspayments.com at startup and exits when that fails (no network here)",
  },
  {
    name: "lunchmoney-mcp",
    pkg: "@akutishevsky/lunchmoney-mcp",
    version: "3.0.0",
    env: { LUNCHMONEY_API_TOKEN: DUMMY },
  },
  {
    name: "lokka",
    pkg: "@merill/lokka",
    version: "0.3.0",
    // Client-provided-token mode: the default client-credentials mode signs in to Entra ID at startup.
    env: { USE_CLIENT_TOKEN: "true", ACCESS_TOKEN: DUMMY },
  },
  {
    name: "umbraco-mcp-dev",
    pkg: "@umbraco-cms/mcp-dev",
    version: "18.1.7",
    env: {
      UMBRACO_CLIENT_ID: "dummy",
      UMBRACO_CLIENT_SECRET: DUMMY,
      UMBRACO_BASE_URL: "http://127.0.0.1:65535",
    },
    skip: "requests a token from the Umbraco instance at startup and exits when that fails (no network here)",
  },
  {
    name: "contentful-management-mcp-server",
    pkg: "@ivotoby/contentful-management-mcp-server",
    version: "1.21.0",
    bin: "mcp-server-contentful",
    env: { CONTENTFUL_MANAGEMENT_ACCESS_TOKEN: "CFPAT-" + DUMMY },
  },
  { name: "qase-mcp-server", pkg: "@qase/mcp-server", version: "2.7.0", env: { QASE_API_TOKEN: DUMMY } },
  {
    name: "dynatrace-managed-mcp-server",
    pkg: "@dynatrace-oss/dynatrace-managed-mcp-server",
    version: "1.1.1",
    env: {
      DT_ENVIRONMENT_CONFIGS: JSON.stringify([
        {
          apiEndpointUrl: "http://127.0.0.1:9/",
          environmentId: "dummy",
          alias: "dummy",
          apiToken: "dt0s01." + DUMMY,
        },
      ]),
      DT_MCP_DISABLE_TELEMETRY: "true",
    },
  },
  { name: "mem0-mcp-server", pkg: "@mem0/mcp-server", version: "0.0.1", env: { MEM0_API_KEY: DUMMY } },
  { name: "bnbchain-mcp", pkg: "@bnb-chain/mcp", version: "1.5.1" },
  { name: "workos-mcp-docs-server", pkg: "@workos/mcp-docs-server", version: "0.2.0" },
  { name: "cyanheads-git-mcp-server", pkg: "@cyanheads/git-mcp-server", version: "2.15.3" },
  {
    name: "karakeep-mcp",
    pkg: "@karakeep/mcp",
    version: "0.33.1",
    env: { KARAKEEP_API_ADDR: "http://127.0.0.1:9", KARAKEEP_API_KEY: DUMMY },
  },
  {
    name: "hevy-mcp",
    pkg: "hevy-mcp",
    version: "6.1.13",
    env: { HEVY_API_KEY: DUMMY, HEVY_MCP_TELEMETRY: "false" },
  },
  { name: "leetcode-mcp-server", pkg: "@jinzcdev/leetcode-mcp-server", version: "1.4.0" },
  { name: "howtocook-mcp", pkg: "howtocook-mcp", version: "0.2.2" },
  {
    name: "adobe-commerce-extensibility-tools",
    pkg: "@adobe-commerce/commerce-extensibility-tools",
    version: "3.5.0",
  },
  {
    name: "pubmed-mcp-server",
    pkg: "@cyanheads/pubmed-mcp-server",
    version: "2.7.4",
    skip: "npm install fails: its dependency cssomnom@^0.1.11 is not on the registry (E404)",
  },
];

type RoundNumber = 1 | 2 | 3 | 4;

interface Round {
  servers: ServerSpec[];
  /** Output directory, relative to this file's directory. */
  outDir: string;
}

const ROUNDS: Record<RoundNumber, Round> = {
  1: { servers: SERVERS, outDir: "benign" },
  2: { servers: ROUND_2_SERVERS, outDir: join("round-2", "benign") },
  3: { servers: ROUND_3_SERVERS, outDir: join("round-3", "benign") },
  4: { servers: ROUND_4_SERVERS, outDir: join("round-4", "benign") },
};

/** No name or package may be pinned in two rounds (nor twice in one round); checks every round. */
function checkRounds(): void {
  const seen = new Map<string, string>();
  for (const [round, { servers }] of Object.entries(ROUNDS))
    for (const s of servers)
      for (const key of [`name ${s.name}`, `package ${s.pkg}`]) {
        const first = seen.get(key);
        if (first !== undefined) throw new Error(`${key} is pinned in round ${first} and round ${round}`);
        seen.set(key, round);
      }
}

const INSTALL_TIMEOUT_MS = 420_000;
const CONNECT_TIMEOUT_MS = 60_000;
const LIST_TIMEOUT_MS = 30_000;
const MAX_PAGES = 50;

const here = dirname(fileURLToPath(import.meta.url));

function log(msg: string): void {
  process.stdout.write(msg + "\n");
}

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<string> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      rej(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) res(out);
      else rej(new Error(`${cmd} ${args.join(" ")} exited ${code ?? signal}: ${tail(out, 600)}`));
    });
  });
}

function tail(s: string, n: number): string {
  const t = s.trim();
  return t.length > n ? "…" + t.slice(-n) : t;
}

/** The most telling line of a crashed server's stderr: the last one naming an error, else the tail. */
function errorLine(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trim());
  const hit = lines.filter((l) => /\b\w*Error\b|\berror\b/i.test(l) && !l.startsWith("at ")).pop();
  return hit ?? tail(stderr, 300);
}

interface PackageJson {
  name?: string;
  version?: string;
  bin?: string | Record<string, string>;
}

function readPkg(path: string): PackageJson {
  return JSON.parse(readFileSync(path, "utf8")) as PackageJson;
}

/** Installs spec into its own prefix (skipped when the pinned version is already there). */
async function install(spec: ServerSpec, scratch: string): Promise<string> {
  const prefix = join(scratch, "servers", spec.name);
  const pkgJson = join(prefix, "node_modules", spec.pkg, "package.json");
  if (existsSync(pkgJson) && readPkg(pkgJson).version === spec.version) {
    log(`  install: reusing ${prefix}`);
    return prefix;
  }
  mkdirSync(prefix, { recursive: true });
  const args = ["install", "--prefix", prefix, `${spec.pkg}@${spec.version}`, "--no-audit", "--no-fund"];
  args.push("--omit=dev", "--no-save", "--loglevel=error");
  if (!spec.scripts) args.push("--ignore-scripts");
  log(`  install: npm ${args.join(" ")}`);
  await run("npm", args, prefix, INSTALL_TIMEOUT_MS);
  const got = readPkg(pkgJson).version;
  if (got !== spec.version) throw new Error(`installed ${got ?? "?"} but pinned ${spec.version}`);
  return prefix;
}

/** Resolves the server's entry script from the package's bin field. */
function entryPoint(spec: ServerSpec, prefix: string): string {
  const root = join(prefix, "node_modules", spec.pkg);
  const { bin } = readPkg(join(root, "package.json"));
  if (typeof bin === "string") return join(root, bin);
  if (!bin) throw new Error("package has no bin");
  const names = Object.keys(bin);
  const base = spec.pkg.split("/").pop() ?? spec.pkg;
  const pick = spec.bin ?? (names.length === 1 ? names[0] : names.find((n) => n === base || n === spec.pkg));
  const rel = pick === undefined ? undefined : bin[pick];
  if (rel === undefined) throw new Error(`cannot choose a bin among ${names.join(", ")}`);
  return join(root, rel);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

// Deliberately loose: the snapshot keeps tool objects exactly as returned, even ones the SDK's own
// ListToolsResultSchema would reject or strip.
const RawListTools = z.looseObject({
  tools: z.array(z.record(z.string(), z.unknown())),
  nextCursor: z.string().optional(),
});
type RawTool = Record<string, unknown>;

/** Starts the server over stdio and lists every tool (all pages). */
async function listTools(spec: ServerSpec, entry: string, scratch: string): Promise<RawTool[]> {
  const sandbox = join(scratch, "sandbox", spec.name);
  const home = join(scratch, "home");
  mkdirSync(sandbox, { recursive: true });
  mkdirSync(home, { recursive: true });
  const sub = (s: string): string => s.split(SANDBOX).join(sandbox);
  for (const [rel, content] of Object.entries(spec.files ?? {})) {
    const file = join(sandbox, rel);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, content);
  }
  const env = Object.fromEntries(Object.entries(spec.env ?? {}).map(([k, v]) => [k, sub(v)]));
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [entry, ...(spec.args ?? []).map(sub)],
    // getDefaultEnvironment() is merged in by the SDK; HOME points at scratch so servers keep no state in ours.
    env: { HOME: home, NODE_ENV: "production", NO_UPDATE_NOTIFIER: "1", DO_NOT_TRACK: "1", ...env },
    cwd: sandbox,
    stderr: "pipe",
  });
  let stderr = "";
  transport.stderr?.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const client = new Client({ name: "cmcp-tool-corpus-snapshot", version: "1.0.0" });
  try {
    await withTimeout(
      client.connect(transport, { timeout: CONNECT_TIMEOUT_MS }),
      CONNECT_TIMEOUT_MS,
      "connect",
    );
    if (!client.getServerCapabilities()?.tools) throw new Error("server does not advertise tools");
    const tools: RawTool[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < MAX_PAGES; page++) {
      const params = cursor === undefined ? {} : { cursor };
      const res = await client.request({ method: "tools/list", params }, RawListTools, {
        timeout: LIST_TIMEOUT_MS,
      });
      tools.push(...res.tools);
      cursor = res.nextCursor;
      if (cursor === undefined) break;
      if (page === MAX_PAGES - 1) throw new Error(`more than ${MAX_PAGES} pages of tools`);
    }
    return tools;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(stderr ? `${msg}; stderr: ${errorLine(stderr)}` : msg, { cause: e });
  } finally {
    const pid = transport.pid;
    await client.close().catch(() => undefined);
    if (pid !== null) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}

async function snapshot(spec: ServerSpec, scratch: string, outDir: string): Promise<number> {
  const prefix = await install(spec, scratch);
  const entry = entryPoint(spec, prefix);
  const shown = (spec.args ?? []).map((a) => a.split(SANDBOX).join(join(scratch, "sandbox", spec.name)));
  log(`  start: node ${entry} ${shown.join(" ")}`.trimEnd());
  const tools = await listTools(spec, entry, scratch);
  if (tools.length === 0) throw new Error("tools/list returned no tools");
  const file = join(outDir, `${spec.name}.json`);
  const doc = {
    server: spec.name,
    package: spec.pkg,
    version: spec.version,
    captured_at: new Date().toISOString(),
    tools,
  };
  writeFileSync(file, JSON.stringify(doc, null, 2) + "\n");
  log(`  wrote ${file} (${tools.length} tools)`);
  return tools.length;
}

interface Options {
  round: RoundNumber;
  only?: Set<string>;
  scratch: string;
  list: boolean;
  all: boolean;
}

function parseRound(a: string | undefined): RoundNumber {
  if (a === "1") return 1;
  if (a === "2") return 2;
  if (a === "3") return 3;
  if (a === "4") return 4;
  throw new Error(`--round takes 1, 2, 3 or 4, not ${a ?? "nothing"}`);
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { round: 1, scratch: join(tmpdir(), "cmcp-tool-corpus"), list: false, all: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--round") opts.round = parseRound(argv[++i]);
    else if (a === "--only") opts.only = new Set((argv[++i] ?? "").split(",").filter(Boolean));
    else if (a === "--scratch") opts.scratch = resolve(argv[++i] ?? opts.scratch);
    else if (a === "--list") opts.list = true;
    else if (a === "--all") opts.all = true;
    else throw new Error(`unknown argument ${a ?? ""}`);
  }
  return opts;
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  checkRounds();
  const { servers, outDir: rel } = ROUNDS[opts.round];
  const outDir = join(here, rel);
  if (opts.list) {
    for (const s of servers) log(`${s.name}\t${s.pkg}@${s.version}${s.skip ? `\tskip: ${s.skip}` : ""}`);
    return;
  }
  const repo = resolve(here, "../../..");
  if (resolve(opts.scratch).startsWith(repo + "/"))
    throw new Error("scratch directory must be outside the repository");
  mkdirSync(outDir, { recursive: true });
  const chosen = servers.filter((s) => !opts.only || opts.only.has(s.name));
  if (opts.only)
    for (const n of opts.only) if (!servers.some((s) => s.name === n)) log(`unknown server ${n}`);
  log(`round ${opts.round}: snapshotting ${chosen.length} server(s) into ${outDir}; scratch ${opts.scratch}`);
  const ok: string[] = [];
  const failed: string[] = [];
  const skipped: string[] = [];
  let total = 0;
  for (const spec of chosen) {
    log(`${spec.name} (${spec.pkg}@${spec.version})`);
    if (spec.skip && !opts.all && !opts.only) {
      log(`  skipped: ${spec.skip}`);
      skipped.push(`${spec.name}: ${spec.skip}`);
      continue;
    }
    try {
      const n = await snapshot(spec, opts.scratch, outDir);
      total += n;
      ok.push(`${spec.name}: ${n}`);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      log(`  FAILED: ${msg}`);
      failed.push(`${spec.name}: ${msg.split("\n")[0] ?? ""}`);
    }
  }
  log(`\nsnapshotted ${ok.length} server(s), ${total} tools`);
  for (const l of ok) log(`  ok     ${l}`);
  for (const l of failed) log(`  failed ${l}`);
  for (const l of skipped) log(`  skipped ${l}`);
  if (failed.length > 0) log("a failed server keeps its previous snapshot, if any");
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
