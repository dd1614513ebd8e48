// A Tally client in TypeScript: commands over NATS (nats.js), reads and the change feed over
// HTTP with Node's built-in fetch.
//
// It opens an account, deposits into it with a command id, shows that sending the same command
// id again after a timeout is safe (the deposit happens once), reads the balance with the
// reply's consistency token (read your writes), then follows the account's change feed while it
// makes one more deposit. Every wait is bounded; any failure exits 1 with a message saying what.
//
// Configuration: the environment variables the `tally` CLI reads, and a few of the example's.
//   TALLY_NATS_URL            nats://127.0.0.1:14222 (comma-separated for several servers)
//   TALLY_NATS_USER           tally-client
//   TALLY_NATS_PASSWORD       default: the contents of .dev/secrets/nats-client (./dev up writes
//                             it; $TALLY_DEV_STATE/secrets/ when that is set)
//   TALLY_NATS_INBOX_PREFIX   default _INBOX_<user>, the only inboxes the server lets it read
//   TALLY_SUBJECT_PREFIX      tally
//   TALLY_TOKEN               a JWT with scopes accounts:write and accounts:read (required)
//   TALLY_API_URL             http://127.0.0.1:8480 (the query-service)
//   TALLY_EXAMPLE_ACCOUNT / _OWNER / _CURRENCY   the account to open (default: a fresh id,
//                             owner "example" (the token's owner if it is bound to one), EUR)
//   TALLY_EXAMPLE_TIMEOUT_S   the bound on every wait, 15

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { connect, ErrorCode, headers, NatsError, type NatsConnection } from "nats";

const FIRST_DEPOSIT = 1050; // minor units: 10.50
const SECOND_DEPOSIT = 250;
// dist/example.js -> examples/typescript -> the repository.
const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Something did not go as Tally documents it: the example stops with this message. */
class ExampleError extends Error {}

interface Config {
  natsUrls: string[];
  natsUser: string;
  natsPassword?: string;
  inboxPrefix: string;
  subjectPrefix: string;
  token: string;
  apiUrl: string;
  account: string;
  owner: string;
  currency: string;
  timeoutMs: number;
}

/** A command reply (schemas/replies/command-reply.json). */
interface Reply {
  status: "accepted" | "rejected";
  command_id: string;
  aggregate_id?: string;
  version?: number;
  consistency_token?: string;
  error?: { code: string; message: string; details?: unknown };
}
type Accepted = Reply & { version: number; consistency_token: string };

/** One Server-Sent Event: its fields (`event`, `id`, `data`). */
type SseEvent = Record<string, string>;

function config(): Config {
  const env = process.env;
  const token = env.TALLY_TOKEN;
  if (!token) {
    throw new ExampleError("no token: set TALLY_TOKEN (scopes accounts:write accounts:read), see README.md");
  }
  const natsUser = env.TALLY_NATS_USER ?? "tally-client";
  const timeoutS = Number(env.TALLY_EXAMPLE_TIMEOUT_S ?? "15");
  if (!(timeoutS > 0)) throw new ExampleError("TALLY_EXAMPLE_TIMEOUT_S must be a positive number");
  return {
    natsUrls: (env.TALLY_NATS_URL ?? "nats://127.0.0.1:14222").split(","),
    natsUser,
    natsPassword: natsUser ? (env.TALLY_NATS_PASSWORD ?? defaultPassword(natsUser)) : undefined,
    inboxPrefix: env.TALLY_NATS_INBOX_PREFIX ?? (natsUser ? `_INBOX_${natsUser}` : "_INBOX"),
    subjectPrefix: env.TALLY_SUBJECT_PREFIX ?? "tally",
    token,
    apiUrl: (env.TALLY_API_URL ?? "http://127.0.0.1:8480").replace(/\/+$/, ""),
    account: env.TALLY_EXAMPLE_ACCOUNT ?? `ex-ts-${randomUUID().replaceAll("-", "").slice(0, 12)}`,
    owner: env.TALLY_EXAMPLE_OWNER ?? "example",
    currency: env.TALLY_EXAMPLE_CURRENCY ?? "EUR",
    timeoutMs: timeoutS * 1000,
  };
}

/** `./dev up` keeps user tally-<name>'s password in .dev/secrets/nats-<name>. */
function defaultPassword(user: string): string {
  const state = process.env.TALLY_DEV_STATE || join(REPO_ROOT, ".dev");
  const path = join(state, "secrets", `nats-${user.replace(/^tally-/, "")}`);
  try {
    return readFileSync(path, "utf8").trim();
  } catch (e) {
    throw new ExampleError(`no NATS password: set TALLY_NATS_PASSWORD (${path}: ${(e as Error).message})`);
  }
}

function say(step: string, message: string): void {
  console.log(`[${step}] ${message}`);
}

/** Commands over NATS and reads over HTTP, with the token on both. */
class Tally {
  constructor(
    readonly cfg: Config,
    private readonly nc: NatsConnection,
  ) {}

  static async connect(cfg: Config): Promise<Tally> {
    try {
      const nc = await connect({
        servers: cfg.natsUrls,
        user: cfg.natsUser || undefined,
        pass: cfg.natsUser ? cfg.natsPassword : undefined,
        inboxPrefix: cfg.inboxPrefix,
        timeout: cfg.timeoutMs,
        reconnect: false,
        name: "tally-example-typescript",
      });
      return new Tally(cfg, nc);
    } catch (e) {
      throw new ExampleError(`cannot connect to NATS at ${cfg.natsUrls.join(",")}: ${String(e)}`);
    }
  }

  /** Sends `name` (e.g. `account.deposit`) and returns the reply. Throws NatsError TIMEOUT when
   * no reply came in time: the command may or may not have run, and sending the same command
   * id again is the safe way to find out. */
  async command(name: string, body: object, commandId: string, timeoutMs?: number): Promise<Reply> {
    const h = headers();
    h.set("Authorization", `Bearer ${this.cfg.token}`);
    h.set("Tally-Command-Id", commandId);
    const msg = await this.nc.request(
      `${this.cfg.subjectPrefix}.cmd.${name}`,
      new TextEncoder().encode(JSON.stringify(body)),
      { timeout: timeoutMs ?? this.cfg.timeoutMs, headers: h },
    );
    return JSON.parse(new TextDecoder().decode(msg.data)) as Reply;
  }

  async accepted(name: string, body: object, commandId: string): Promise<Accepted> {
    let reply: Reply;
    try {
      reply = await this.command(name, body, commandId);
    } catch (e) {
      if (isNatsError(e, ErrorCode.Timeout))
        throw new ExampleError(`${name}: no reply within ${this.cfg.timeoutMs} ms`);
      if (isNatsError(e, ErrorCode.NoResponders))
        throw new ExampleError(`${name}: no command-service is listening`);
      throw e;
    }
    if (reply.status !== "accepted") {
      throw new ExampleError(`${name} rejected: ${reply.error?.code}: ${reply.error?.message}`);
    }
    return reply as Accepted;
  }

  /** GET on the query-service: the status and the parsed JSON body. */
  async get(path: string, extra: Record<string, string> = {}): Promise<{ status: number; body: any }> {
    const response = await this.fetch(path, extra, AbortSignal.timeout(this.cfg.timeoutMs));
    const text = await response.text();
    try {
      return { status: response.status, body: JSON.parse(text) };
    } catch {
      return { status: response.status, body: { detail: text } };
    }
  }

  async fetch(path: string, extra: Record<string, string>, signal: AbortSignal): Promise<Response> {
    try {
      return await fetch(this.cfg.apiUrl + path, {
        headers: { Authorization: `Bearer ${this.cfg.token}`, ...extra },
        signal,
      });
    } catch (e) {
      throw new ExampleError(`GET ${path}: ${String(e)}`);
    }
  }

  async close(): Promise<void> {
    await this.nc.close();
  }
}

function isNatsError(e: unknown, code: string): boolean {
  return e instanceof NatsError && e.code === code;
}

/** The Server-Sent Events of `response`, one record of fields (`event`, `id`, `data`, `retry`)
 * each: a blank line ends an event, lines starting with `:` are comments (keep-alives), `data:`
 * lines of one event are joined by `\n`. A block without data (such as `retry: 1000`, the
 * server's advice on how long to wait before reconnecting) is no event to the application, as
 * with EventSource: the caller takes its `retry` and drops it. (Browsers' EventSource cannot
 * send Authorization, hence fetch and this parser.) */
async function* sseEvents(response: Response): AsyncGenerator<SseEvent> {
  if (!response.body) throw new ExampleError("the feed has no body");
  const decoder = new TextDecoder();
  let buffer = "";
  let event: SseEvent = {};
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk as Uint8Array, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (Object.keys(event).length > 0) yield event;
        event = {};
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        event[field] = field === "data" && "data" in event ? `${event.data}\n${value}` : value;
      }
    }
  }
}

/** Follows the account's feed from `after` (a command reply's consistency token): yields its
 * events, and reconnects with `Last-Event-ID` when the server ends the stream for `max_age` or
 * `shutdown`, after the pause the server asked for. `connected` runs once the first stream is
 * open. Ends at `signal`. */
async function* followAccount(
  tally: Tally,
  after: string,
  signal: AbortSignal,
  connected: () => Promise<void>,
): AsyncGenerator<SseEvent> {
  const path = `/v1/accounts/${encodeURIComponent(tally.cfg.account)}/feed`;
  let query = `?after=${encodeURIComponent(after)}`; // the first time; then Last-Event-ID
  const extra: Record<string, string> = { Accept: "text/event-stream" };
  let retryMs = 1000; // until the server says otherwise
  let first = true;
  for (;;) {
    const response = await tally.fetch(path + query, extra, signal);
    const kind = response.headers.get("content-type") ?? "";
    if (response.status !== 200 || !kind.startsWith("text/event-stream")) {
      throw new ExampleError(`GET ${path + query}: ${response.status} ${kind} ${await response.text()}`);
    }
    if (first) await connected();
    first = false;
    let ended = false;
    for await (const event of sseEvents(response)) {
      if (/^\d+$/.test(event.retry ?? "")) retryMs = Number(event.retry);
      if (!("data" in event)) continue;
      if (event.id !== undefined) {
        query = "";
        extra["Last-Event-ID"] = event.id;
      }
      yield event;
      if (event.event === "end") {
        const reason = JSON.parse(event.data).reason;
        if (reason !== "max_age" && reason !== "shutdown") return;
        ended = true;
        break; // reconnect, resuming after the last event seen
      }
    }
    if (!ended) throw new ExampleError("the feed ended without an `end` event");
    await sleep(retryMs, undefined, { signal });
  }
}

async function openAccount(tally: Tally): Promise<void> {
  const { account, owner, currency } = tally.cfg;
  const reply = await tally.accepted("account.open", { account_id: account, owner, currency }, randomUUID());
  say("open", `account ${account} of ${owner} in ${currency}: version ${reply.version}`);
}

/** Deposits once, although the command is sent three times with the same command id. */
async function depositWithSafeRetry(tally: Tally): Promise<Accepted> {
  const commandId = randomUUID(); // keep it until the answer is known: resending it is safe
  const body = { account_id: tally.cfg.account, amount: FIRST_DEPOSIT, reference: "example deposit" };
  say("deposit", `${FIRST_DEPOSIT} with command id ${commandId}, waiting only 1 ms for the reply`);
  try {
    const early = await tally.command("account.deposit", body, commandId, 1);
    say("deposit", `the reply beat the 1 ms timeout anyway: ${JSON.stringify(early)}`);
  } catch (e) {
    if (!isNatsError(e, ErrorCode.Timeout)) throw e;
    say("deposit", "timed out: did it run? Unknown, so send the same command id again");
  }
  const first = await tally.accepted("account.deposit", body, commandId);
  say("retry", `same id again: ${first.status}, version ${first.version}`);
  const again = await tally.accepted("account.deposit", body, commandId);
  if (JSON.stringify(again) !== JSON.stringify(first)) {
    throw new ExampleError(
      `the same command id answered differently: ${JSON.stringify(first)} then ${JSON.stringify(again)}`,
    );
  }
  say(
    "retry",
    "and once more: the very same reply (same version, same consistency token), so the deposit ran exactly once",
  );
  return first;
}

/** Reads the account as of `reply`, whatever the read model's lag: the API waits for it. */
async function readYourWrite(tally: Tally, reply: Accepted, expected: number): Promise<void> {
  const path = `/v1/accounts/${encodeURIComponent(tally.cfg.account)}`;
  const extra = { "Tally-Consistency-Token": reply.consistency_token, "Tally-Wait-Ms": "5000" };
  const deadline = Date.now() + tally.cfg.timeoutMs;
  for (;;) {
    const { status, body } = await tally.get(path, extra);
    if (status === 200) {
      say(
        "read",
        `with consistency token ${reply.consistency_token}: balance ${body.balance} ${body.currency}, version ${body.version}`,
      );
      if (body.balance !== expected || body.version < reply.version) {
        throw new ExampleError(
          `expected balance ${expected} at version >= ${reply.version}: ${JSON.stringify(body)}`,
        );
      }
      return;
    }
    // 409 not_yet_consistent: the read model did not reach the write within Tally-Wait-Ms.
    if (status !== 409 || Date.now() > deadline) {
      throw new ExampleError(`reading the balance: ${status} ${JSON.stringify(body)}`);
    }
  }
}

/** Follows the account's feed from `after` (a consistency token) while depositing again. */
async function followFeed(tally: Tally, after: string): Promise<void> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), tally.cfg.timeoutMs);
  let version = Number.MAX_SAFE_INTEGER; // the second deposit's, once made
  const deposit = async () => {
    const reply = await tally.accepted(
      "account.deposit",
      { account_id: tally.cfg.account, amount: SECOND_DEPOSIT, reference: "while watching" },
      randomUUID(),
    );
    version = reply.version;
    say("deposit", `${SECOND_DEPOSIT} more: version ${reply.version}; waiting for the feed`);
  };
  try {
    say("feed", `following /v1/accounts/${tally.cfg.account}/feed?after=${after}`);
    const expected = FIRST_DEPOSIT + SECOND_DEPOSIT;
    for await (const event of followAccount(tally, after, abort.signal, deposit)) {
      const at = event.id === undefined ? "" : ` id ${event.id}`;
      say("feed", `event ${event.event ?? "message"}${at}: ${event.data}`);
      if (event.event === "end") {
        const reason = JSON.parse(event.data).reason;
        if (reason !== "max_age" && reason !== "shutdown") {
          throw new ExampleError(`the server ended the feed: ${event.data}`);
        }
        say("feed", `ended (${reason}): reconnecting, resuming after the last event seen`);
      }
      if (event.event !== "change") continue; // `reset`: the changes that follow carry the state
      const change = JSON.parse(event.data);
      if (change.version >= version) {
        if (change.balance !== expected) {
          throw new ExampleError(`the feed shows balance ${change.balance}, not ${expected}`);
        }
        say("feed", `balance ${change.balance} at version ${change.version}: done`);
        return;
      }
    }
    throw new ExampleError("the feed ended");
  } catch (e) {
    if (abort.signal.aborted) {
      throw new ExampleError(`the feed did not show the new balance within ${tally.cfg.timeoutMs} ms`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
    abort.abort(); // closes the stream
  }
}

async function main(): Promise<number> {
  try {
    const cfg = config();
    const tally = await Tally.connect(cfg);
    say("connect", `NATS ${cfg.natsUrls.join(",")} as ${cfg.natsUser || "(no user)"}; API ${cfg.apiUrl}`);
    try {
      await openAccount(tally);
      const reply = await depositWithSafeRetry(tally);
      await readYourWrite(tally, reply, FIRST_DEPOSIT);
      await followFeed(tally, reply.consistency_token);
    } finally {
      await tally.close();
    }
  } catch (e) {
    console.error(`error: ${e instanceof ExampleError ? e.message : String(e)}`);
    return 1;
  }
  console.log("ok: opened, deposited once despite the retry, read our write, saw the change live");
  return 0;
}

process.exit(await main());
