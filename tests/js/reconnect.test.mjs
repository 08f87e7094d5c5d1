// Reconnecting: backoff, close codes, refused handshakes, the welcome deadline, the network.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ConnectionFailed } from "../../asgi_groups/static/asgi-groups.js";
import { start, welcome } from "./fakes.mjs";

/** Open the newest socket and drop it without a welcome; return the wait before the next one. */
function failOnce(harness, code = 1006) {
  harness.socket.accept().drop(code);
  return harness.nextSocketAfter();
}

test("without jitter the delay doubles from minDelay up to maxDelay", (t) => {
  const harness = start(t, { minDelay: 100, maxDelay: 1000, jitter: false });
  const delays = Array.from({ length: 7 }, () => failOnce(harness));
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
});

test("the jitter is full: each wait is a random share of the delay", (t) => {
  const shares = [0.5, 0.25, 0.75, 0.125, 1];
  const harness = start(t, { minDelay: 100, maxDelay: 800, random: () => shares.shift() });
  const delays = Array.from({ length: 5 }, () => failOnce(harness));
  assert.deepEqual(delays, [50, 50, 300, 100, 800]);
});

test("by default the first wait is Math.random() of 500 ms", (t) => {
  t.mock.method(Math, "random", () => 0.5);
  const harness = start(t, { random: undefined });
  assert.equal(failOnce(harness), 250);
});

test("a welcome resets the backoff", (t) => {
  const harness = start(t, { minDelay: 100, maxDelay: 10_000, jitter: false });
  assert.deepEqual([failOnce(harness), failOnce(harness), failOnce(harness)], [100, 200, 400]);
  harness.socket.accept().receive(welcome({}));
  harness.socket.drop(1006);
  assert.equal(harness.nextSocketAfter(), 100);
});

for (const code of [1001, 1006, 1009, 1011, 1012, 1013, 4400]) {
  test(`a close with ${code} reconnects`, (t) => {
    const { client, socket, of, nextSocketAfter } = start(t, { jitter: false });
    socket.accept().receive(welcome({}));
    socket.drop(code, "bye");
    assert.equal(client.state, "reconnecting");
    assert.deepEqual(of("close"), [{ code, reason: "bye", willReconnect: true }]);
    assert.equal(nextSocketAfter(), 500);
  });
}

for (const code of [1000, 1008, 4401, 4403]) {
  test(`a close with ${code} from the server stops the client`, (t) => {
    const { client, socket, sockets, of, nextSocketAfter } = start(t);
    socket.accept().receive(welcome({}));
    socket.drop(code, "stop");
    assert.equal(client.state, "closed");
    assert.deepEqual(of("close"), [{ code, reason: "stop", willReconnect: false }]);
    assert.deepEqual(of("offline"), [null]);
    assert.equal(nextSocketAfter(10 * 30_000), null);
    assert.equal(sockets.length, 1);
  });
}

for (const code of [4408, 4429]) {
  test(`a close with ${code} waits maxDelay, whatever the jitter`, (t) => {
    const { socket, of, nextSocketAfter } = start(t, { maxDelay: 5000, random: () => 0 });
    socket.accept().receive(welcome({}));
    socket.drop(code);
    assert.deepEqual(of("close"), [{ code, reason: "", willReconnect: true }]);
    assert.equal(nextSocketAfter(), 5000);
  });
}

test("close() closes the socket with 1000 and stops reconnecting", (t) => {
  const { client, socket, sockets, of, nextSocketAfter } = start(t);
  socket.accept().receive(welcome({}));
  client.close();
  assert.deepEqual(socket.closedWith, { code: 1000, reason: "" });
  assert.equal(client.state, "closed");
  assert.deepEqual(of("close"), [{ code: 1000, reason: "", willReconnect: false }]);
  assert.deepEqual(of("offline"), [null]);
  socket.receive({ kind: "late frame" }); // frames still in flight are not delivered
  socket.drop(1000); // the socket's own close event comes later: nothing more happens
  assert.equal(of("close").length, 1);
  assert.deepEqual(of("message"), []);
  assert.equal(nextSocketAfter(100_000), null);
  assert.equal(sockets.length, 1);
});

test("close() while waiting to reconnect cancels the attempt", (t) => {
  const { client, socket, sockets, nextSocketAfter } = start(t);
  socket.accept().drop(1006);
  client.close();
  assert.equal(nextSocketAfter(100_000), null);
  assert.equal(sockets.length, 1);
});

test("connect() after close() starts again", (t) => {
  const { client, socket, sockets } = start(t);
  socket.accept().receive(welcome({}));
  client.close();
  client.connect();
  assert.equal(sockets.length, 2);
  assert.equal(client.state, "connecting");
  client.connect(); // already connecting: no second socket
  assert.equal(sockets.length, 2);
});

test("maxHandshakeFailures sockets in a row closing before they open fail the client", (t) => {
  const { client, sockets, socket, of, nextSocketAfter } = start(t, { maxHandshakeFailures: 3 });
  socket.drop(1006);
  nextSocketAfter();
  sockets[1].drop(1006);
  nextSocketAfter();
  assert.equal(client.state, "reconnecting");
  sockets[2].drop(1006);
  assert.equal(client.state, "failed");
  assert.deepEqual(
    of("close").map((c) => c.willReconnect),
    [true, true, false],
  );
  const [error] = of("error");
  assert.ok(error instanceof ConnectionFailed);
  assert.equal(error.failures, 3);
  assert.deepEqual(of("offline"), [], "never online, so never offline");
  assert.equal(nextSocketAfter(100_000), null);
  client.connect();
  assert.equal(client.state, "connecting");
  assert.equal(sockets.length, 4);
});

test("by default sockets failing before they open never stop the client (a long restart)", (t) => {
  const harness = start(t);
  for (let i = 0; i < 20; i += 1) {
    harness.socket.drop(1006);
    assert.equal(harness.client.state, "reconnecting");
    harness.nextSocketAfter();
  }
});

test("a socket that opens resets the count of refused handshakes", (t) => {
  const harness = start(t, { maxHandshakeFailures: 3 });
  const refuse = () => {
    harness.socket.drop(1006);
    harness.nextSocketAfter();
  };
  refuse();
  refuse();
  harness.socket.accept().drop(1006);
  harness.nextSocketAfter();
  refuse();
  refuse();
  assert.equal(harness.client.state, "reconnecting");
});

test("online on each welcome, offline when a welcomed socket drops", (t) => {
  const { socket, sockets, of, nextSocketAfter } = start(t);
  socket.accept();
  assert.deepEqual(of("online"), []);
  socket.receive(welcome({}));
  socket.drop(1006);
  nextSocketAfter();
  sockets[1].drop(1006); // refused: already offline
  nextSocketAfter();
  sockets[2].accept().receive(welcome({}));
  assert.deepEqual(of("online"), [null, null]);
  assert.deepEqual(of("offline"), [null]);
});

test("no welcome within helloTimeout: the socket is dropped and the client reconnects", (t) => {
  const { client, socket, of, nextSocketAfter } = start(t, { helloTimeout: 1000, jitter: false });
  socket.accept();
  t.mock.timers.tick(999);
  assert.equal(socket.closedWith, null);
  t.mock.timers.tick(1);
  assert.deepEqual(socket.closedWith, { code: 4000, reason: "no welcome" });
  assert.deepEqual(of("close"), [{ code: 4000, reason: "no welcome", willReconnect: true }]);
  assert.equal(client.state, "reconnecting");
  assert.equal(nextSocketAfter(), 500);
});

test("a welcome in time cancels the welcome deadline", (t) => {
  const { client, socket, nextSocketAfter } = start(t, { helloTimeout: 1000 });
  socket.accept().receive(welcome({}));
  assert.equal(nextSocketAfter(5000), null);
  assert.equal(socket.closedWith, null);
  assert.equal(client.state, "open");
});

test("when the network goes offline the client waits for it, then reconnects at once", (t) => {
  const network = new EventTarget();
  const { client, socket, sockets, nextSocketAfter } = start(t, { network });
  socket.accept().receive(welcome({}));
  network.dispatchEvent(new Event("offline"));
  assert.equal(client.state, "open", "an open socket is left to the browser to close");
  socket.drop(1006);
  assert.equal(nextSocketAfter(100_000), null, "no attempt while offline");
  network.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 2);
  assert.equal(client.state, "reconnecting");
});

test("coming back online cuts a pending backoff short", (t) => {
  const network = new EventTarget();
  const { socket, sockets, nextSocketAfter } = start(t, {
    network,
    minDelay: 10_000,
    jitter: false,
  });
  socket.accept().drop(1006);
  assert.equal(sockets.length, 1);
  network.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 2);
  assert.equal(nextSocketAfter(20_000), null, "the cancelled backoff opens no second socket");
});

test("a stopped client no longer listens to the network", (t) => {
  const network = new EventTarget();
  const { client, socket, sockets } = start(t, { network });
  socket.accept().drop(1006);
  client.close();
  network.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 1);
});
