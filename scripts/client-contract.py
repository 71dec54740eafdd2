"""Drives a gateway through the Python client that openapi-python-client generated from
openapi/openapi.yaml (issue 16): every call goes through the generated functions and models, and
any answer that is not what the contract promises exits non-zero. Run by scripts/client-contract,
which generates and installs the client and starts the gateway.

    python3 scripts/client-contract.py --base http://127.0.0.1:PORT

The gateway must be standalone (its own seed and master) and allow the node-port tag `time`: a
call goes to a mailbox of its own, whose request this script reads and answers through the
generated client, and one to the gateway node's own node port.
Every wait is bounded: long-polls ask for at most 10 s, threads are joined with a deadline.
"""
import argparse
import concurrent.futures
import sys
import time

import httpx

from aemp_gateway_client import Client
from aemp_gateway_client.api.database import get_family, get_key, set_key
from aemp_gateway_client.api.feeds import watch_family
from aemp_gateway_client.api.mailboxes import create_mailbox, get_mailbox, read_mailbox
from aemp_gateway_client.api.messaging import call, send
from aemp_gateway_client.api.nodes import get_node
from aemp_gateway_client.models import (
    CallRequest,
    CallResponse200,
    Envelope,
    FeedChanges,
    FeedSnapshot,
    Key,
    Mailbox,
    MailboxInfo,
    MailboxMessage,
    MailboxOptions,
    MailboxPoll,
    NodeInfo,
    Problem,
    SendResponse202,
)
from aemp_gateway_client.types import UNSET

failures = []
checks = 0


def check(condition, what):
    """Records a failed expectation (and carries on, so one run shows every mismatch)."""
    global checks
    checks += 1
    if not condition:
        failures.append(what)
        print(f"client-contract: FAIL: {what}", file=sys.stderr)
    return condition


def expect_type(value, cls, what):
    return check(isinstance(value, cls), f"{what}: expected {cls.__name__}, got {type(value).__name__}: {value!r}")


def expect_problem(value, status, code, what):
    """A problem+json answer, parsed into the generated Problem model."""
    if not expect_type(value, Problem, what):
        return None
    check(value.status == status and value.code == code, f"{what}: expected {status} {code}, got {value.status} {value.code}")
    check(value.type_ == f"urn:aemp-gateway:problem:{code}", f"{what}: type {value.type_}")
    check(bool(value.detail) and bool(value.request_id), f"{what}: detail and request_id: {value!r}")
    return value


def in_background(pool, fn, **kwargs):
    return pool.submit(fn, **kwargs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    args = parser.parse_args()
    client = Client(base_url=args.base, raise_on_unexpected_status=True, timeout=httpx.Timeout(20.0))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)

    node = get_node.sync(client=client)
    expect_type(node, NodeInfo, "GET /v1/node")
    check(node.standalone and node.master == node.node, f"a standalone gateway is its own master: {node!r}")

    # --- mailboxes: create, read ----------------------------------------------------------
    box = create_mailbox.sync(client=client, body=MailboxOptions(ttl=120, max_queue=50))
    expect_type(box, Mailbox, "POST /v1/ports")
    check(box.ttl == 120 and box.max_queue == 50 and box.port == f"{node.node}#{box.name}", f"the mailbox: {box!r}")
    info = get_mailbox.sync(box.name, client=client)
    expect_type(info, MailboxInfo, "GET /v1/ports/{name}")
    check(info.last == 0 and info.queued == 0, f"a new mailbox is empty: {info!r}")

    # --- send: one, a batch; read them back by long-poll -----------------------------------
    one = send.sync(client=client, body=Envelope(port=box.port, message=["hello", 1, {"k": [None, 2.5]}]))
    expect_type(one, SendResponse202, "POST /v1/send (one)")
    check(one.accepted == 1, f"accepted: {one!r}")
    batch = send.sync(client=client, body=[Envelope(port=box.port, message=["b1"]), Envelope(port=box.port, message=["b2"])])
    expect_type(batch, SendResponse202, "POST /v1/send (batch)")
    check(batch.accepted == 2, f"accepted: {batch!r}")
    got = []
    after = 0
    deadline = time.monotonic() + 15
    while len(got) < 3 and time.monotonic() < deadline:
        poll = read_mailbox.sync(box.name, client=client, after=after, wait=5)
        if not expect_type(poll, MailboxPoll, "GET /v1/ports/{name}/messages"):
            break
        for entry in poll.messages:
            if expect_type(entry, MailboxMessage, "a mailbox entry"):
                check(entry.type_ == "message", f"entry type {entry.type_}")
                got.append(entry.message)
        after = poll.last
    check(got == [["hello", 1, {"k": [None, 2.5]}], ["b1"], ["b2"]], f"the messages, in order: {got!r}")
    acked = read_mailbox.sync(box.name, client=client, after=after, wait=0)
    check(isinstance(acked, MailboxPoll) and acked.messages == [] and acked.last == after, f"acknowledged: {acked!r}")

    # A parked long-poll is answered by the next message.
    parked = in_background(pool, read_mailbox.sync, name=box.name, client=client, after=after, wait=10)
    time.sleep(0.3)
    send.sync(client=client, body=Envelope(port=box.port, message=["wake"]))
    woken = parked.result(timeout=15)
    check(isinstance(woken, MailboxPoll) and [e.message for e in woken.messages] == [["wake"]], f"the parked poll: {woken!r}")
    after = woken.last

    # --- call: a mailbox, answered by this script at the appended reply port; the node port ----
    pending = in_background(pool, call.sync, client=client, body=CallRequest(port=box.port, message=["ping", 7], timeout=10.0))
    request = read_mailbox.sync(box.name, client=client, after=after, wait=10)
    entries = request.messages if isinstance(request, MailboxPoll) else []
    check(len(entries) == 1 and entries[0].message[:2] == ["ping", 7], f"the call's request in the mailbox: {request!r}")
    if entries:
        reply_port = entries[0].message[-1]
        answered = send.sync(client=client, body=Envelope(port=reply_port, message=["pong", 7]))
        expect_type(answered, SendResponse202, "POST /v1/send to the reply port")
    reply = pending.result(timeout=15)
    expect_type(reply, CallResponse200, "POST /v1/call (mailbox)")
    check(isinstance(reply, CallResponse200) and reply.reply == ["pong", 7], f"the reply: {reply!r}")
    # The gateway's own node port, with the tag the gateway allows (--allow-node-port-tag time).
    clock = call.sync(client=client, body=CallRequest(port=node.node, message=["time"], timeout=5.0))
    expect_type(clock, CallResponse200, "POST /v1/call (the node port's time)")
    if isinstance(clock, CallResponse200):
        check(len(clock.reply) == 1 and abs(float(clock.reply[0]) - time.time()) < 60, f"the node's time: {clock.reply!r}")

    # --- the database: set, read the family and one key, watch -----------------------------
    family = f"client-contract-{int(time.time() * 1000)}"
    put = set_key.sync(family, "web1", client=client, body={"url": "http://10.0.0.5", "weight": 3})
    expect_type(put, Key, "PUT /v1/db/{family}/{subkey}")
    check(isinstance(put, Key) and put.value == {"url": "http://10.0.0.5", "weight": 3}, f"the set key: {put!r}")
    values = {}
    deadline = time.monotonic() + 10
    while "web1" not in values and time.monotonic() < deadline:
        whole = get_family.sync(family, client=client)
        values = whole.values.additional_properties if whole is not None and not isinstance(whole, Problem) else {}
        time.sleep(0.05)
    check(values == {"web1": {"url": "http://10.0.0.5", "weight": 3}}, f"GET /v1/db/{{family}}: {values!r}")
    key = get_key.sync(family, "web1", client=client)
    expect_type(key, Key, "GET /v1/db/{family}/{subkey}")
    check(isinstance(key, Key) and key.family == family and key.subkey == "web1" and key.value == put.value, f"the key: {key!r}")

    snapshot = watch_family.sync(family, client=client, wait=0)
    expect_type(snapshot, FeedSnapshot, "GET /v1/db/{family}/watch (snapshot)")
    if isinstance(snapshot, FeedSnapshot):
        check(snapshot.type_ == "snapshot" and snapshot.reset is False, f"the snapshot: {snapshot!r}")
        check(snapshot.values.additional_properties == values, f"the snapshot's values: {snapshot!r}")
        watching = in_background(pool, watch_family.sync, family=family, client=client, index=snapshot.id, wait=10)
        time.sleep(0.3)
        set_key.sync(family, "web2", client=client, body=[1, 2])
        changes = watching.result(timeout=15)
        expect_type(changes, FeedChanges, "GET /v1/db/{family}/watch (long-poll)")
        if isinstance(changes, FeedChanges):
            check(changes.type_ == "changes" and changes.id != snapshot.id, f"the changes: {changes!r}")
            check(len(changes.changes) == 1 and changes.changes[0].type_ == "change", f"one change: {changes!r}")
            if changes.changes:
                check(changes.changes[0].added.additional_properties == {"web2": [1, 2]}, f"added: {changes.changes[0]!r}")

    # --- typed errors ----------------------------------------------------------------------
    instance = box.name.split(".")[0]
    expect_problem(get_mailbox.sync(f"{instance}.nosuchbox", client=client), 404, "unknown_mailbox", "an unknown mailbox")
    expect_problem(get_key.sync(family, "nope", client=client), 404, "unknown_key", "an absent key")
    expect_problem(create_mailbox.sync(client=client, body=MailboxOptions(ttl=0)), 422, "invalid_request", "ttl 0")
    bare = expect_problem(send.sync(client=client, body=Envelope(port="justname", message=["x"])), 403, "node_port_forbidden", "a port without '#'")
    if bare:
        check("justname#" in bare.detail, f"the detail suggests a port name: {bare.detail}")
    # A member the request schema does not know: the generated models cannot send one, so this
    # one request goes through the client's httpx client; its answer is parsed by the model.
    raw = client.get_httpx_client().post("/v1/send", json={"port": box.port, "message": ["x"], "priorty": 1})
    check(raw.status_code == 422 and raw.headers.get("content-type", "").startswith("application/problem+json"), f"unknown member: {raw}")
    unknown = expect_problem(Problem.from_dict(raw.json()), 422, "unknown_field", "an unknown member")
    if unknown:
        check(unknown.field == "priorty", f"the problem names the member: {unknown!r}")
        check(unknown.index is UNSET, f"no index for a single envelope: {unknown!r}")

    pool.shutdown(wait=False)
    print(f"client-contract: {checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
