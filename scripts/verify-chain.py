#!/usr/bin/env python3
"""Recompute Tally's hash chain from an NDJSON export, independently of Tally's code.

    tally audit export acc-1 | python3 scripts/verify-chain.py

Reads the events of one aggregate (oldest first) on stdin and checks every link with the
definition in docs/design/hash-chain.md. Exit status 0 when every hash matches, 1 at the first
that does not (printed), 2 on unusable input. Standard library only.
"""

import hashlib
import json
import sys


def field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_bytes(event) -> bytes:
    return (
        b"tally-chain-v1"
        + field(event["aggregate_type"].encode())
        + field(event["aggregate_id"].encode())
        + event["sequence"].to_bytes(8, "big")
        + field(event["event_type"].encode())
        + field(event["event_version"].encode())
        + field(canonical_json(event["payload"]))
        + field(canonical_json(event["metadata"]))
    )


def main() -> int:
    prev = bytes(32)
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            print(f"not NDJSON: {error}", file=sys.stderr)
            return 2
        expected = hashlib.sha256(prev + canonical_bytes(event)).hexdigest()
        found = event.get("hash")
        if found != expected:
            print(
                f"{event['aggregate_type']} {event['aggregate_id']} event {event['sequence']}: "
                f"expected {expected}, found {found}"
            )
            return 1
        prev = bytes.fromhex(found)
        count += 1
    print(f"OK: {count} events, head {prev.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
