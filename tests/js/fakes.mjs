// Test doubles for the browser client: a scriptable WebSocket, a storage, and a client factory.

import { GroupsClient } from "../../asgi_groups/static/asgi-groups.js";

export const URL_ = "ws://example.test/ws";
export const EVENTS = [
  "open",
  "welcome",
  "recovered",
  "message",
  "close",
  "online",
  "offline",
  "refreshed",
  "error",
];

/** A fresh WebSocket class whose instances the test drives as the server would. */
export function fakeWebSocket() {
  /** @type {FakeSocket[]} */
  const sockets = [];

  class FakeSocket {
    static sockets = sockets;

    /**
     * @param {string} url
     * @param {string[]} [protocols]
     */
    constructor(url, protocols = []) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.binaryType = "blob";
      /** @type {unknown[]} */
      this.sent = [];
      /** @type {{code: number, reason: string} | null} */
      this.closedWith = null;
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      sockets.push(this);
    }

    /** @param {unknown} data */
    send(data) {
      if (this.readyState === 0) throw new Error("InvalidStateError: still connecting");
      if (this.readyState === 1) this.sent.push(data);
    }

    close(code = 1000, reason = "") {
      this.closedWith = { code, reason };
      this.readyState = 2;
    }

    // The server's side.

    accept() {
      this.readyState = 1;
      this.onopen?.({ type: "open" });
      return this;
    }

    /** Each argument is one text frame: a string as is, anything else as JSON. */
    receive(...frames) {
      for (const frame of frames) {
        const data =
          typeof frame === "string" || frame instanceof ArrayBuffer ? frame : JSON.stringify(frame);
        this.onmessage?.({ data });
      }
      return this;
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** The frames the client sent, JSON parsed where they are JSON. */
    get frames() {
      return this.sent.map((data) => {
        try {
          return JSON.parse(String(data));
        } catch {
          return data;
        }
      });
    }

    get hello() {
      return this.frames[0];
    }
  }

  return FakeSocket;
}

/** An in-memory `sessionStorage`. */
export class FakeStorage {
  constructor(entries = {}) {
    this.map = new Map(Object.entries(entries));
  }

  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  setItem(key, value) {
    this.map.set(key, String(value));
  }
}

/**
 * A connected client over a fake socket, with mock timers and every event recorded.
 * @param {import("node:test").TestContext} t
 * @param {import("../../asgi_groups/static/asgi-groups.js").GroupsClientOptions} [options]
 */
export function start(t, options = {}, { connect = true, mockTimers = true } = {}) {
  if (mockTimers) t.mock.timers.enable({ apis: ["setTimeout"] });
  const WebSocket = fakeWebSocket();
  const client = new GroupsClient(URL_, {
    WebSocket,
    network: null,
    random: () => 0.5,
    ...options,
  });
  /** @type {{name: string, detail: any}[]} */
  const events = [];
  for (const name of EVENTS) client.on(name, (detail) => events.push({ name, detail }));
  if (connect) client.connect();
  const sockets = WebSocket.sockets;
  return {
    client,
    sockets,
    events,
    /** The socket the client opened last. */
    get socket() {
      return sockets[sockets.length - 1];
    },
    /** Details of the events called `name`, in order. */
    of(name) {
      return events.filter((event) => event.name === name).map((event) => event.detail);
    },
    /** How many ms pass before the client opens another socket (null: none within `limit`). */
    nextSocketAfter(limit = 100_000) {
      const before = sockets.length;
      for (let elapsed = 0; elapsed <= limit; elapsed += 1) {
        if (elapsed > 0) t.mock.timers.tick(1);
        if (sockets.length > before) return elapsed;
      }
      return null;
    },
  };
}

export function welcome(channels = {}, recovered = true) {
  return { type: "ag.welcome", connection: "c1", user: "42", recovered, channels };
}

export function message(channel, epoch, offset, data) {
  return { type: "ag.message", channel, epoch, offset, data };
}

/** Let pending promise callbacks run (one macrotask turn; timers stay mocked). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
