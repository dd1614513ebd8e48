#!/usr/bin/env python3
"""A Tally client in Python: commands over NATS (nats-py), reads and the change feed over HTTP.

It opens an account, deposits into it with a command id, shows that sending the same command id
again after a timeout is safe (the deposit happens once), reads the balance with the reply's
consistency token (read your writes), then follows the account's change feed while it makes one
more deposit. Every wait is bounded; any failure exits non-zero with a message saying what.

Configuration (flags, or the same environment variables the `tally` CLI reads):
  TALLY_NATS_URL         nats://127.0.0.1:14222 (comma-separated for several servers)
  TALLY_NATS_USER        tally-client
  TALLY_NATS_PASSWORD    default: the contents of .dev/secrets/nats-client (./dev up writes it;
                         $TALLY_DEV_STATE/secrets/ when that is set)
  TALLY_NATS_INBOX_PREFIX  default _INBOX_<user>, the only inboxes the server lets that user read
  TALLY_SUBJECT_PREFIX   tally
  TALLY_TOKEN            a JWT with scopes accounts:write and accounts:read (required)
  TALLY_API_URL          http://127.0.0.1:8480 (the query-service)
  TALLY_EXAMPLE_ACCOUNT / _OWNER / _CURRENCY   the account to open (default: a fresh id,
                         owner "example" (use the token's owner if it is bound to one), EUR)
  TALLY_EXAMPLE_TIMEOUT_S  the bound on every wait, 15
"""

import argparse
import asyncio
import json
import os
import pathlib
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import nats
import nats.errors

FIRST_DEPOSIT = 1050  # minor units: 10.50
SECOND_DEPOSIT = 250
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class ExampleError(Exception):
    """Something did not go as Tally documents it: the example stops with this message."""


CONNECTED = "connected"  # what the feed's reader hands over once the stream is open


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nats-url", default=env("TALLY_NATS_URL", "nats://127.0.0.1:14222"))
    p.add_argument("--nats-user", default=env("TALLY_NATS_USER", "tally-client"))
    p.add_argument("--nats-password", default=env("TALLY_NATS_PASSWORD"))
    p.add_argument("--nats-inbox-prefix", default=env("TALLY_NATS_INBOX_PREFIX"))
    p.add_argument("--subject-prefix", default=env("TALLY_SUBJECT_PREFIX", "tally"))
    p.add_argument("--token", default=env("TALLY_TOKEN"))
    p.add_argument("--api-url", default=env("TALLY_API_URL", "http://127.0.0.1:8480"))
    p.add_argument("--account", default=env("TALLY_EXAMPLE_ACCOUNT"))
    p.add_argument("--owner", default=env("TALLY_EXAMPLE_OWNER", "example"))
    p.add_argument("--currency", default=env("TALLY_EXAMPLE_CURRENCY", "EUR"))
    p.add_argument("--timeout", type=float, default=float(env("TALLY_EXAMPLE_TIMEOUT_S", "15")))
    args = p.parse_args(argv)
    if not args.token:
        p.error("no token: set TALLY_TOKEN (scopes accounts:write accounts:read), see README.md")
    if args.nats_user and args.nats_password is None:
        args.nats_password = default_password(args.nats_user)
    args.account = args.account or "ex-py-" + uuid.uuid4().hex[:12]
    args.api_url = args.api_url.rstrip("/")
    return args


def default_password(user):
    """`./dev up` keeps user tally-<name>'s password in .dev/secrets/nats-<name>."""
    state = pathlib.Path(os.environ.get("TALLY_DEV_STATE") or REPO_ROOT / ".dev")
    path = state / "secrets" / ("nats-" + user.removeprefix("tally-"))
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ExampleError(f"no NATS password: set TALLY_NATS_PASSWORD ({path}: {e.strerror})")


def say(step, message):
    print(f"[{step}] {message}", flush=True)


class Tally:
    """Commands over NATS and reads over HTTP, with the token on both."""

    def __init__(self, args):
        self.args = args
        self.nc = None

    async def connect(self):
        a = self.args
        inbox = a.nats_inbox_prefix or ("_INBOX_" + a.nats_user if a.nats_user else "_INBOX")
        errors = []

        async def on_error(e):  # one line instead of nats-py's default traceback
            errors.append(e)
            print(f"nats: {e!r}", file=sys.stderr, flush=True)

        try:
            self.nc = await asyncio.wait_for(
                nats.connect(
                    servers=a.nats_url.split(","),
                    user=a.nats_user or None,
                    password=a.nats_password if a.nats_user else None,
                    inbox_prefix=inbox.encode(),
                    connect_timeout=a.timeout,
                    allow_reconnect=False,
                    error_cb=on_error,
                    name="tally-example-python",
                ),
                a.timeout,
            )
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as e:
            cause = errors[-1] if errors else e
            raise ExampleError(f"cannot connect to NATS at {a.nats_url}: {cause!r}") from e

    async def command(self, name, body, command_id, timeout=None):
        """Sends `name` (e.g. `account.deposit`) and returns the parsed reply.

        Raises nats.errors.TimeoutError when no reply came in time: the command may or may not
        have run, and sending the same command id again is the safe way to find out."""
        reply = await self.nc.request(
            f"{self.args.subject_prefix}.cmd.{name}",
            json.dumps(body).encode(),
            timeout=timeout or self.args.timeout,
            headers={
                "Authorization": "Bearer " + self.args.token,
                "Tally-Command-Id": command_id,
            },
        )
        return json.loads(reply.data)

    async def accepted(self, name, body, command_id):
        try:
            reply = await self.command(name, body, command_id)
        except nats.errors.TimeoutError as e:
            raise ExampleError(f"{name}: no reply within {self.args.timeout} s") from e
        except nats.errors.NoRespondersError as e:
            raise ExampleError(f"{name}: no command-service is listening") from e
        if reply.get("status") != "accepted":
            error = reply.get("error", {})
            raise ExampleError(f"{name} rejected: {error.get('code')}: {error.get('message')}")
        return reply

    async def get(self, path, headers=None):
        """GET on the query-service: (status, parsed JSON body)."""
        return await asyncio.to_thread(self._get, path, headers or {})

    def _get(self, path, headers):
        request = urllib.request.Request(self.args.api_url + path, headers=self.auth(headers))
        try:
            with urllib.request.urlopen(request, timeout=self.args.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"detail": body.decode(errors="replace")}
        except (OSError, ValueError) as e:
            raise ExampleError(f"GET {path}: {e!r}") from e

    def auth(self, headers):
        return {"Authorization": "Bearer " + self.args.token, **headers}


def sse_events(response):
    """The Server-Sent Events of `response`, one dict of fields (`event`, `id`, `data`, `retry`)
    each.

    A blank line ends an event; lines starting with `:` are comments (keep-alives); `data:`
    lines of one event are joined by newlines. A block without data (such as `retry: 1000`,
    the server's advice on how long to wait before reconnecting) is no event to the
    application, as with EventSource: the caller takes its `retry` and drops it."""
    event = {}
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data" and "data" in event:
                value = event["data"] + "\n" + value
            event[field] = value


def read_feed(tally, after, put, stop):
    """Follows the account's feed from `after` (in a thread: urllib blocks), handing each event
    to `put`; reconnects with `Last-Event-ID` when the server ends the stream for `max_age` or
    `shutdown`. Hands over an ExampleError and returns on any failure."""
    path = f"/v1/accounts/{urllib.parse.quote(tally.args.account)}/feed"
    # The first time from the command reply's consistency token; then from the last event seen.
    query, headers = "?after=" + urllib.parse.quote(after), {"Accept": "text/event-stream"}
    retry_s, connected = 1.0, False  # the server may say how long to wait before reconnecting
    try:
        while not stop.is_set():
            request = urllib.request.Request(
                tally.args.api_url + path + query, headers=tally.auth(headers)
            )
            # The socket timeout bounds each read; keep-alives come every 15 s.
            with urllib.request.urlopen(request, timeout=tally.args.timeout + 5) as response:
                kind = response.headers.get("Content-Type", "")
                if not kind.startswith("text/event-stream"):
                    raise ExampleError(f"feed answered {response.status} {kind}, not a stream")
                if not connected:
                    put(CONNECTED)
                    connected = True
                for event in sse_events(response):
                    if stop.is_set():
                        return
                    if event.get("retry", "").isdigit():
                        retry_s = int(event["retry"]) / 1000
                    if "data" not in event:
                        continue
                    put(event)
                    if "id" in event:  # where to resume: the last event seen
                        query, headers["Last-Event-ID"] = "", event["id"]
                    if event.get("event") == "end":
                        if json.loads(event["data"]).get("reason") not in ("max_age", "shutdown"):
                            return
                        break  # reconnect, resuming after the last event
                else:
                    raise ExampleError("the feed ended without an `end` event")
            stop.wait(retry_s)  # as the server asked; returns at once when the example ends
    except urllib.error.HTTPError as e:
        put(ExampleError(f"GET {path}: {e.code} {e.read().decode(errors='replace')}"))
    except ExampleError as e:
        put(e)
    except (OSError, ValueError) as e:
        if not stop.is_set():
            put(ExampleError(f"reading the feed {path}: {e!r}"))


async def open_account(tally):
    a = tally.args
    body = {"account_id": a.account, "owner": a.owner, "currency": a.currency}
    reply = await tally.accepted("account.open", body, str(uuid.uuid4()))
    say("open", f"account {a.account} of {a.owner} in {a.currency}: version {reply['version']}")


async def deposit_with_safe_retry(tally):
    """Deposits once, although the command is sent three times with the same command id."""
    a = tally.args
    command_id = str(uuid.uuid4())  # keep it until the answer is known: resending it is safe
    body = {"account_id": a.account, "amount": FIRST_DEPOSIT, "reference": "example deposit"}
    say("deposit", f"{FIRST_DEPOSIT} with command id {command_id}, waiting only 1 ms for the reply")
    try:
        early = await tally.command("account.deposit", body, command_id, timeout=0.001)
        say("deposit", f"the reply beat the 1 ms timeout anyway: {early}")
    except nats.errors.TimeoutError:
        say("deposit", "timed out: did it run? Unknown, so send the same command id again")
    first = await tally.accepted("account.deposit", body, command_id)
    say("retry", f"same id again: {first['status']}, version {first['version']}")
    again = await tally.accepted("account.deposit", body, command_id)
    if again != first:
        raise ExampleError(f"the same command id answered differently: {first} then {again}")
    say("retry", "and once more: the very same reply (same version, same consistency token), "
        "so the deposit ran exactly once")
    return first


async def read_your_write(tally, reply, expected):
    """Reads the account as of `reply`, whatever the read model's lag: the API waits for it."""
    a = tally.args
    headers = {"Tally-Consistency-Token": reply["consistency_token"], "Tally-Wait-Ms": "5000"}
    deadline = asyncio.get_running_loop().time() + a.timeout
    while True:
        status, body = await tally.get(f"/v1/accounts/{urllib.parse.quote(a.account)}", headers)
        if status == 200:
            break
        # 409 not_yet_consistent: the read model did not reach the write within Tally-Wait-Ms.
        if status != 409 or asyncio.get_running_loop().time() > deadline:
            raise ExampleError(f"reading the balance: {status} {body}")
    say("read", f"with consistency token {reply['consistency_token']}: balance {body['balance']}"
        f" {body['currency']}, version {body['version']}")
    if body["balance"] != expected or body["version"] < reply["version"]:
        raise ExampleError(f"expected balance {expected} at version >= {reply['version']}: {body}")


async def follow_feed(tally, after):
    """Follows the account's feed from `after` (a consistency token) while depositing again."""
    a = tally.args
    events, stop = asyncio.Queue(), threading.Event()
    loop = asyncio.get_running_loop()

    def put(item):  # called from the reader thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the loop is gone: the example has finished
            pass

    threading.Thread(target=read_feed, args=(tally, after, put, stop), daemon=True).start()
    say("feed", f"following /v1/accounts/{a.account}/feed?after={after}")
    try:
        opened = await next_item(events, a.timeout)
        if opened != CONNECTED:
            raise opened if isinstance(opened, ExampleError) else ExampleError(f"feed: {opened}")
        reply = await tally.accepted(
            "account.deposit",
            {"account_id": a.account, "amount": SECOND_DEPOSIT, "reference": "while watching"},
            str(uuid.uuid4()),
        )
        expected = FIRST_DEPOSIT + SECOND_DEPOSIT
        say("deposit", f"{SECOND_DEPOSIT} more: version {reply['version']}; waiting for the feed")
        await wait_for_balance(events, expected, reply["version"], a.timeout)
    finally:
        stop.set()


async def next_item(events, timeout):
    """The next thing the feed's reader handed over, within `timeout` seconds."""
    try:
        item = await asyncio.wait_for(events.get(), timeout)
    except asyncio.TimeoutError:
        raise ExampleError(f"nothing from the feed within {timeout:.1f} s") from None
    if isinstance(item, ExampleError):
        raise item
    return item


async def wait_for_balance(events, expected, version, timeout):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise ExampleError(f"the feed did not show balance {expected} within {timeout} s")
        try:
            event = await next_item(events, left)
        except ExampleError:
            if loop.time() < deadline:
                raise
            raise ExampleError(f"the feed did not show balance {expected} within {timeout} s")
        at = f" id {event['id']}" if "id" in event else ""
        say("feed", f"event {event.get('event', 'message')}{at}: {event['data']}")
        kind = event.get("event", "message")
        if kind == "end":
            reason = json.loads(event["data"]).get("reason")
            if reason not in ("max_age", "shutdown"):
                raise ExampleError(f"the server ended the feed: {event['data']}")
            say("feed", f"ended ({reason}): reconnecting, resuming after the last event seen")
            continue
        if kind == "reset":  # the changes that follow carry the current state
            continue
        if kind != "change":
            continue
        change = json.loads(event["data"])
        if change["version"] >= version:
            if change["balance"] != expected:
                raise ExampleError(f"the feed shows balance {change['balance']}, not {expected}")
            say("feed", f"balance {change['balance']} at version {change['version']}: done")
            return


async def run(args):
    tally = Tally(args)
    await tally.connect()
    say("connect", f"NATS {args.nats_url} as {args.nats_user or '(no user)'}; API {args.api_url}")
    try:
        await open_account(tally)
        reply = await deposit_with_safe_retry(tally)
        await read_your_write(tally, reply, FIRST_DEPOSIT)
        await follow_feed(tally, reply["consistency_token"])
    finally:
        await tally.nc.close()


def main(argv):
    try:
        args = parse_args(argv)
        asyncio.run(run(args))
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print("ok: opened, deposited once despite the retry, read our write, saw the change live")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
