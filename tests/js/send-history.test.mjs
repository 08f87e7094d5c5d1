// Sending while online and offline, and history requests.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  GroupsError,
  HistoryError,
  NotConnected,
  OfflineQueueFull,
} from "../../asgi_groups/static/asgi-groups.js";
import { settle, start, welcome } from "./fakes.mjs";

/** Whether a promise has settled yet, and how. */
function watch(promise) {
  const seen = { state: "pending", value: undefined };
  promise.then(
    (value) => Object.assign(seen, { state: "fulfilled", value }),
    (value) => Object.assign(seen, { state: "rejected", value }),
  );
  return seen;
}

test("objects are sent as JSON, strings and bytes as they are", (t) => {
  const { client, socket } = start(t);
  socket.accept().receive(welcome({}));
  const bytes = new Uint8Array([1, 2]);
  client.send({ type: "chat", text: "hi" });
  client.send("raw text");
  client.send(bytes);
  client.send([1, null]);
  assert.deepEqual(socket.sent.slice(1), [
    '{"type":"chat","text":"hi"}',
    "raw text",
    bytes,
    "[1,null]",
  ]);
});

test("frame types of the protocol cannot be sent by the app", (t) => {
  const { client, socket } = start(t);
  socket.accept().receive(welcome({}));
  assert.throws(() => client.send({ type: "ag.hello" }), TypeError);
  assert.throws(() => client.send(undefined), TypeError);
  assert.equal(socket.sent.length, 1);
});

test("sends while offline are queued and go out in order after the welcome", (t) => {
  const { client, socket, sockets, nextSocketAfter } = start(t);
  client.send({ n: 1 });
  client.send("two");
  socket.accept();
  assert.deepEqual(
    socket.frames,
    [{ type: "ag.hello", positions: {} }],
    "nothing before the welcome",
  );
  socket.receive(welcome({}));
  assert.deepEqual(socket.frames.slice(1), [{ n: 1 }, "two"]);
  client.send({ n: 3 });
  assert.deepEqual(socket.frames.at(-1), { n: 3 }, "sent at once while open");

  socket.drop(1006);
  client.send({ n: 4 });
  client.send({ n: 5 });
  nextSocketAfter();
  sockets[1].accept().receive(welcome({}));
  assert.deepEqual(sockets[1].frames, [{ type: "ag.hello", positions: {} }, { n: 4 }, { n: 5 }]);
});

test("the offline queue holds maxQueued sends; one more throws OfflineQueueFull", (t) => {
  const { client, socket } = start(t, { maxQueued: 2 });
  client.send("a");
  client.send("b");
  assert.throws(
    () => client.send("c"),
    (error) =>
      error instanceof OfflineQueueFull &&
      error instanceof GroupsError &&
      error.name === "OfflineQueueFull" &&
      error.code === "queue_full" &&
      error.limit === 2,
  );
  socket.accept().receive(welcome({}));
  assert.deepEqual(socket.sent.slice(1), ["a", "b"]);
});

test("the default queue bound is 100", (t) => {
  const { client } = start(t);
  for (let i = 0; i < 100; i += 1) client.send(i);
  assert.throws(() => client.send(100), OfflineQueueFull);
});

test('with offline: "reject", a send while not connected throws NotConnected', (t) => {
  const { client, socket, sockets, nextSocketAfter } = start(t, { offline: "reject" });
  assert.throws(
    () => client.send("early"),
    (error) => error instanceof NotConnected && error.state === "connecting",
  );
  socket.accept();
  assert.throws(() => client.send("before the welcome"), NotConnected);
  socket.receive(welcome({}));
  client.send("now");
  socket.drop(1006);
  assert.throws(
    () => client.send("dropped"),
    (error) => error instanceof NotConnected && error.state === "reconnecting",
  );
  nextSocketAfter();
  sockets[1].accept().receive(welcome({}));
  assert.deepEqual(socket.sent.slice(1), ["now"]);
  assert.deepEqual(sockets[1].sent.slice(1), []);
});

test("a client not connected, or closed, refuses sends; close() drops the queue", (t) => {
  const { client, sockets } = start(t, {}, { connect: false });
  assert.throws(() => client.send("x"), NotConnected, "before connect()");
  const strict = start(t, { offline: "reject" }, { connect: false, mockTimers: false });
  assert.throws(() => strict.client.send("x"), NotConnected);
  client.connect();
  client.send("queued");
  client.close();
  assert.throws(
    () => client.send("late"),
    (error) => error instanceof NotConnected && error.state === "closed",
  );
  client.connect();
  sockets[1].accept().receive(welcome({}));
  assert.deepEqual(sockets[1].sent.slice(1), [], "the queue went with close()");
});

test("history is asked once welcomed, and the answer is matched by id", async (t) => {
  const { client, socket } = start(t);
  const room = client.history("g:room", 2);
  const lobby = client.history("g:lobby");
  socket.accept();
  assert.equal(socket.sent.length, 1, "only the hello before the welcome");
  socket.receive(welcome({}));
  const [, roomAsk, lobbyAsk] = socket.frames;
  assert.deepEqual(roomAsk, { type: "ag.history", id: roomAsk.id, channel: "g:room", limit: 2 });
  assert.deepEqual(lobbyAsk, {
    type: "ag.history",
    id: lobbyAsk.id,
    channel: "g:lobby",
    limit: 50,
  });
  assert.notEqual(roomAsk.id, lobbyAsk.id);
  socket.receive(
    {
      type: "ag.history",
      id: lobbyAsk.id,
      channel: "g:lobby",
      epoch: "e",
      offset: 0,
      messages: [],
    },
    {
      type: "ag.history",
      id: roomAsk.id,
      channel: "g:room",
      epoch: "e1",
      offset: 42,
      messages: [
        { offset: 41, data: { text: "a" } },
        { offset: 42, data: "AQI=", encoding: "base64" },
      ],
    },
  );
  const answer = await room;
  assert.deepEqual(answer.messages[0], { offset: 41, data: { text: "a" } });
  assert.deepEqual([...answer.messages[1].data], [1, 2]);
  assert.deepEqual(
    { ...answer, messages: undefined },
    {
      channel: "g:room",
      epoch: "e1",
      offset: 42,
      messages: undefined,
    },
  );
  assert.deepEqual(await lobby, { channel: "g:lobby", epoch: "e", offset: 0, messages: [] });
});

test("an ag.error answering a history request rejects it with a HistoryError", async (t) => {
  const { client, socket, of } = start(t);
  socket.accept().receive(welcome({}));
  const asked = client.history("g:other");
  const { id } = socket.frames.at(-1);
  socket.receive({
    type: "ag.error",
    id,
    error: "forbidden",
    detail: "not a channel of this connection",
  });
  await assert.rejects(
    asked,
    (error) =>
      error instanceof HistoryError &&
      error.code === "forbidden" &&
      error.detail === "not a channel of this connection" &&
      error.channel === "g:other",
  );
  assert.deepEqual(of("error"), [], "answered: not an error event");
});

test("a history request without an answer in historyTimeout rejects with timeout", async (t) => {
  const { client, socket, of } = start(t, { historyTimeout: 1000 });
  socket.accept().receive(welcome({}));
  const seen = watch(client.history("g:room"));
  t.mock.timers.tick(999);
  await settle();
  assert.equal(seen.state, "pending");
  t.mock.timers.tick(1);
  await settle();
  assert.equal(seen.state, "rejected");
  assert.ok(seen.value instanceof HistoryError);
  assert.equal(seen.value.code, "timeout");
  const { id } = socket.frames.at(-1);
  socket.receive({ type: "ag.history", id, channel: "g:room", messages: [] });
  assert.deepEqual(of("error"), [], "a late answer is ignored");
});

test("the timeout also covers the wait for a welcome", async (t) => {
  const { client } = start(t);
  const seen = watch(client.history("g:room"));
  t.mock.timers.tick(10_000);
  await settle();
  assert.equal(seen.state, "rejected");
  assert.equal(seen.value.code, "timeout");
});

test("a drop rejects requests in flight; unsent ones wait for the next welcome", async (t) => {
  const { client, socket, sockets, nextSocketAfter } = start(t);
  socket.accept().receive(welcome({}));
  const inFlight = watch(client.history("g:a"));
  socket.drop(1006);
  const waiting = watch(client.history("g:b"));
  await settle();
  assert.equal(inFlight.state, "rejected");
  assert.equal(inFlight.value.code, "disconnected");
  assert.equal(waiting.state, "pending");
  nextSocketAfter();
  sockets[1].accept().receive(welcome({}));
  const ask = sockets[1].frames.at(-1);
  assert.equal(ask.channel, "g:b");
  sockets[1].receive({
    type: "ag.history",
    id: ask.id,
    channel: "g:b",
    epoch: "e",
    offset: 1,
    messages: [],
  });
  await settle();
  assert.equal(waiting.state, "fulfilled");
});

test("close() rejects pending history; a closed client rejects new requests", async (t) => {
  const { client, socket } = start(t);
  socket.accept().receive(welcome({}));
  const pending = client.history("g:a");
  client.close();
  await assert.rejects(
    pending,
    (error) => error instanceof HistoryError && error.code === "closed",
  );
  await assert.rejects(client.history("g:a"), (error) => error.code === "closed");
});
