/**
 * Browser client of the asgi_groups recoverable protocol (docs/PROTOCOL.md): one WebSocket that
 * reconnects with jittered backoff and resumes every channel from the last position it saw, so
 * that the page gets what it missed, in order and none twice, or is told plainly that it cannot.
 *
 * No dependencies, no build step: `import { GroupsClient } from "/asgi-groups.js"`.
 *
 * @module asgi-groups
 */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed" | "failed"} ClientState */

/** @typedef {"queue" | "reject"} OfflinePolicy */

/**
 * A place in one channel's history: `offset` counts the messages of the history named `epoch`.
 * @typedef {object} Position
 * @property {string} epoch
 * @property {number} offset
 */

/** @typedef {Record<string, Position>} Positions */

/**
 * What the client needs of `sessionStorage` / `localStorage`.
 * @typedef {object} StorageLike
 * @property {(key: string) => string | null} getItem
 * @property {(key: string, value: string) => void} setItem
 */

/**
 * What the client needs of a WebSocket (the browser's, or a test double).
 * @typedef {object} SocketLike
 * @property {number} readyState
 * @property {string} binaryType
 * @property {(data: string | ArrayBufferLike | ArrayBufferView | Blob) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {((event: Event) => unknown) | null} onopen
 * @property {((event: MessageEvent) => unknown) | null} onmessage
 * @property {((event: CloseEvent) => unknown) | null} onclose
 * @property {((event: Event) => unknown) | null} onerror
 */

/** @typedef {new (url: string, protocols?: string[]) => SocketLike} SocketConstructor */

/** @typedef {"subprotocol" | "query"} TokenPlacement */

/**
 * Gives the token the socket authenticates with: called before every (re)connect and every
 * refresh, so that it can fetch a fresh one (a string, or a Promise of one).
 * @typedef {() => string | PromiseLike<string>} TokenSource
 */

/**
 * One channel of an `ag.welcome`: where its stream continues from, and whether it was recovered.
 * @typedef {object} WelcomeChannel
 * @property {string} [epoch]
 * @property {number} [offset]
 * @property {boolean} recovered
 * @property {string} [reason]
 */

/**
 * The server's answer to the hello (the `welcome` event's detail, as received).
 * @typedef {object} Welcome
 * @property {"ag.welcome"} type
 * @property {string} connection
 * @property {string | null} user
 * @property {boolean} recovered
 * @property {Record<string, WelcomeChannel>} channels
 * @property {number} [expires_in] seconds until the socket's credential lapses (a token)
 */

/**
 * The server's answer to a refresh: the socket now lives until `expires_at` (Unix seconds).
 * @typedef {object} RefreshResult
 * @property {"ag.refreshed"} type
 * @property {number} id
 * @property {number | null} expires_at
 * @property {number | null} expires_in seconds left, by the server's clock
 */

/**
 * @typedef {object} ChannelRecovery
 * @property {boolean} recovered
 * @property {string | null} reason why not (null when recovered), e.g. "epoch changed"
 */

/**
 * Detail of the `recovered` event: `recovered: false` means the page should reload its state.
 * @typedef {object} RecoveredDetail
 * @property {boolean} recovered
 * @property {Record<string, ChannelRecovery>} channels
 */

/**
 * Detail of the `message` event; `channel`, `epoch` and `offset` are null for frames that are
 * not `ag.message` (the application's own frames), `epoch` and `offset` for channels without
 * history.
 * @typedef {object} MessageDetail
 * @property {string | null} channel
 * @property {unknown} data a JSON value, a string, or a Uint8Array for binary messages
 * @property {string | null} epoch
 * @property {number | null} offset
 */

/**
 * Detail of the `close` event, fired each time a socket goes away.
 * @typedef {object} CloseDetail
 * @property {number} code
 * @property {string} reason
 * @property {boolean} willReconnect
 */

/**
 * @typedef {object} HistoryMessage
 * @property {number | null} offset
 * @property {unknown} data
 */

/**
 * The answer to `history()`: the newest kept messages of a channel, oldest first.
 * @typedef {object} HistoryResult
 * @property {string} channel
 * @property {string | null} epoch the channel's newest position
 * @property {number | null} offset
 * @property {HistoryMessage[]} messages
 */

/**
 * Options of `GroupsClient`; every limit has a default.
 * @typedef {object} GroupsClientOptions
 * @property {number} [minDelay=500] first reconnect delay (ms); doubles after each attempt
 *   that did not reach a welcome
 * @property {number} [maxDelay=30000] cap of the reconnect delay (ms); also the wait after a
 *   close with 4408 or 4429
 * @property {boolean} [jitter=true] full jitter: wait a random time in [0, delay]
 * @property {number} [maxHandshakeFailures=Infinity] sockets in a row that close before
 *   opening after which the client stops in state "failed". A browser cannot tell a refused
 *   handshake (logged out: HTTP 403) from a server that is down, so the default keeps
 *   retrying with the capped backoff; a page can check its session on `close` events with
 *   `willReconnect` before any welcome, or set a limit
 * @property {StorageLike | null} [storage=null] keeps positions across a page reload
 *   (e.g. sessionStorage)
 * @property {string} [storageKey] key in `storage`; default "asgi-groups:positions:" followed
 *   by the socket URL without its query string
 * @property {OfflinePolicy} [offline="queue"] what `send()` does while not connected: queue
 *   (sent in order after the next welcome) or throw `NotConnected`
 * @property {number} [maxQueued=100] sends kept while offline; one more throws
 *   `OfflineQueueFull`
 * @property {number} [helloTimeout=10000] ms to wait for the welcome after the hello before
 *   dropping the socket and reconnecting; 0 waits forever
 * @property {number} [historyTimeout=10000] ms a `history()` request may take; 0: no limit
 * @property {SocketConstructor} [WebSocket] the socket class; default `globalThis.WebSocket`
 * @property {EventTarget | null} [network] source of "online" / "offline" events (reconnect
 *   at once when the browser is back online); default `window` where there is one
 * @property {() => number} [random=Math.random] source of the jitter, in [0, 1)
 * @property {TokenSource | null} [token=null] the socket authenticates with the token it
 *   gives, called before every (re)connect; the client refreshes it on the open socket before
 *   it lapses (`expires_in` of the welcome), and a close with 4401 reconnects once with a
 *   fresh one rather than stopping
 * @property {TokenPlacement} [tokenIn="subprotocol"] where the token goes in the handshake:
 *   an offered subprotocol "bearer.<token>" (`SubprotocolToken`) or the query parameter
 *   "access_token" (`QueryToken`; query strings can end up in access logs)
 * @property {number} [refreshMargin=30000] refresh the token this many ms before it lapses,
 *   but never before half of its remaining time has passed
 * @property {number} [refreshTimeout=10000] ms a refresh may take; 0: no limit
 */

/**
 * Events and their `detail` (also the argument of an `on()` callback).
 * @typedef {object} GroupsClientEventMap
 * @property {null} open a socket opened (the hello is sent; not usable until welcome)
 * @property {Welcome} welcome
 * @property {RecoveredDetail} recovered
 * @property {MessageDetail} message
 * @property {CloseDetail} close
 * @property {null} online the client is welcomed (after being offline, or at first)
 * @property {null} offline the socket dropped (after a welcome)
 * @property {RefreshResult} refreshed the server took a fresh token: the socket lives on
 * @property {GroupsError} error
 */

/**
 * @typedef {object} PendingHistory
 * @property {number} id
 * @property {string} channel
 * @property {number} limit
 * @property {boolean} sent
 * @property {ReturnType<typeof setTimeout> | null} timer
 * @property {(result: HistoryResult) => void} resolve
 * @property {(error: HistoryError) => void} reject
 */

/**
 * @typedef {object} PendingRefresh
 * @property {number} id
 * @property {ReturnType<typeof setTimeout> | null} timer
 * @property {(result: RefreshResult) => void} resolve
 * @property {(error: RefreshError) => void} reject
 */

/** Close codes after which the client stops: normal close, policy, logged out, forbidden. */
const TERMINAL_CODES = new Set([1000, 1008, 4401, 4403]);
/** The close code of a socket whose credential lapsed or was revoked. */
const UNAUTHORIZED = 4401;
/** How the token rides in the handshake: the server's `SubprotocolToken` / `QueryToken`. */
const TOKEN_SUBPROTOCOL_PREFIX = "bearer.";
const TOKEN_QUERY_PARAMETER = "access_token";
/** Close codes after which the client waits `maxDelay`: too many errors, rate limited. */
const THROTTLE_CODES = new Set([4408, 4429]);
/** The code (and reason) of the client's own close when no welcome came in time. */
const NO_WELCOME_CODE = 4000;
/** Caps the backoff exponent so that `minDelay * 2 ** n` stays finite. */
const MAX_EXPONENT = 30;

/** Base class of the errors the client throws, rejects with or reports. */
export class GroupsError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "GroupsError";
    /** @type {string} machine-readable kind, e.g. "queue_full" or "forbidden" */
    this.code = code;
  }
}

/** `send()` while not connected, under the "reject" policy or after the client stopped. */
export class NotConnected extends GroupsError {
  /** @param {ClientState} state */
  constructor(state) {
    super("not_connected", `not connected (state: ${state})`);
    this.name = "NotConnected";
    /** @type {ClientState} */
    this.state = state;
  }
}

/** `send()` while offline with `maxQueued` sends already waiting. */
export class OfflineQueueFull extends GroupsError {
  /** @param {number} limit */
  constructor(limit) {
    super("queue_full", `offline queue full (${limit} sends waiting)`);
    this.name = "OfflineQueueFull";
    /** @type {number} */
    this.limit = limit;
  }
}

/**
 * A `history()` request that failed: `code` is the server's error ("invalid", "forbidden",
 * "no_history", "unavailable") or "timeout", "disconnected" (the socket dropped) or "closed".
 */
export class HistoryError extends GroupsError {
  /**
   * @param {string} code
   * @param {string} detail
   * @param {string} channel
   */
  constructor(code, detail, channel) {
    super(code, `history of ${channel}: ${code}${detail ? ` (${detail})` : ""}`);
    this.name = "HistoryError";
    /** @type {string} */
    this.detail = detail;
    /** @type {string} */
    this.channel = channel;
  }
}

/** An `ag.error` frame that answers no pending request (the `error` event's detail). */
export class ServerError extends GroupsError {
  /**
   * @param {string} code
   * @param {string} detail
   * @param {string | number | null} id
   */
  constructor(code, detail, id) {
    super(code, `server error: ${code}${detail ? ` (${detail})` : ""}`);
    this.name = "ServerError";
    /** @type {string} */
    this.detail = detail;
    /** @type {string | number | null} */
    this.id = id;
  }
}

/**
 * A token refresh that failed: `code` is the server's error ("refresh_refused": the token is
 * not valid or names another user; "refresh_failed": the server cannot check it now), or
 * "timeout", "disconnected" (the socket dropped first), "closed", "not_connected",
 * "no_token" (no `token` option) or "token_failed" (the `token` option threw or gave no string).
 * The socket keeps running until its old expiry.
 */
export class RefreshError extends GroupsError {
  /**
   * @param {string} code
   * @param {string} detail
   */
  constructor(code, detail) {
    super(code, `token refresh: ${code}${detail ? ` (${detail})` : ""}`);
    this.name = "RefreshError";
    /** @type {string} */
    this.detail = detail;
  }
}

/** The client gave up after `maxHandshakeFailures` sockets in a row closed before opening. */
export class ConnectionFailed extends GroupsError {
  /** @param {number} failures */
  constructor(failures) {
    super("handshake_failed", `${failures} connection attempts in a row failed before opening`);
    this.name = "ConnectionFailed";
    /** @type {number} */
    this.failures = failures;
  }
}

/**
 * A real-time connection to an asgi_groups `RecoverableView`, kept up across drops.
 *
 * Events (`addEventListener(name, e => e.detail)` or `on(name, detail => ...)`): open, welcome,
 * recovered, message, close, online, offline, refreshed, error.
 */
export class GroupsClient extends EventTarget {
  /** @type {string} */
  #url;
  /** @type {Required<Omit<GroupsClientOptions, "storage" | "network" | "token">>} */
  #options;
  /** @type {StorageLike | null} */
  #storage;
  /** @type {EventTarget | null} */
  #network;
  /** @type {TokenSource | null} */
  #token;
  /** @type {SocketLike | null} */
  #ws = null;
  /** @type {ClientState} */
  #state = "closed";
  /** @type {Map<string, Position>} */
  #positions = new Map();
  /** @type {Array<string | ArrayBufferLike | ArrayBufferView | Blob>} */
  #queue = [];
  /** @type {Map<number, PendingHistory>} */
  #pending = new Map();
  /** @type {Map<number, PendingRefresh>} */
  #refreshes = new Map();
  #nextId = 1;
  /** Reconnect attempts since the last welcome (the backoff exponent). */
  #attempt = 0;
  /** Sockets in a row that closed before opening. */
  #handshakeFailures = 0;
  #opened = false;
  #welcomed = false;
  #online = false;
  #throttled = false;
  #networkDown = false;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #timer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #helloTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #refreshTimer = null;
  /** Counts `#open()` calls: a token that comes after a newer one (or `close()`) is dropped. */
  #dials = 0;
  /** A close with 4401 already reconnected with a fresh token, and no refresh succeeded since. */
  #reauthenticated = false;

  /**
   * @param {string | URL} url the socket's URL; a relative one ("/ws") is resolved against the
   *   page, http(s) becomes ws(s)
   * @param {GroupsClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    this.#url = socketUrl(url);
    const WebSocketClass = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError("no WebSocket class: pass one as the WebSocket option");
    }
    const withoutQuery = new URL(this.#url);
    withoutQuery.search = "";
    this.#options = {
      minDelay: nonNegative("minDelay", options.minDelay ?? 500),
      maxDelay: nonNegative("maxDelay", options.maxDelay ?? 30_000),
      jitter: options.jitter ?? true,
      maxHandshakeFailures: positive("maxHandshakeFailures", options.maxHandshakeFailures ?? Infinity),
      storageKey: options.storageKey ?? `asgi-groups:positions:${withoutQuery.href}`,
      offline: options.offline ?? "queue",
      maxQueued: nonNegative("maxQueued", options.maxQueued ?? 100),
      helloTimeout: nonNegative("helloTimeout", options.helloTimeout ?? 10_000),
      historyTimeout: nonNegative("historyTimeout", options.historyTimeout ?? 10_000),
      WebSocket: WebSocketClass,
      random: options.random ?? Math.random,
      tokenIn: options.tokenIn ?? "subprotocol",
      refreshMargin: nonNegative("refreshMargin", options.refreshMargin ?? 30_000),
      refreshTimeout: nonNegative("refreshTimeout", options.refreshTimeout ?? 10_000),
    };
    if (this.#options.offline !== "queue" && this.#options.offline !== "reject") {
      throw new TypeError(`offline must be "queue" or "reject", not ${this.#options.offline}`);
    }
    if (this.#options.tokenIn !== "subprotocol" && this.#options.tokenIn !== "query") {
      throw new TypeError(`tokenIn must be "subprotocol" or "query", not ${this.#options.tokenIn}`);
    }
    this.#token = options.token ?? null;
    if (this.#token !== null && typeof this.#token !== "function") {
      throw new TypeError("token must be a function giving the token (or a Promise of it)");
    }
    this.#storage = options.storage ?? null;
    const win = /** @type {any} */ (globalThis).window;
    this.#network =
      options.network !== undefined
        ? options.network
        : win && typeof win.addEventListener === "function"
          ? win
          : null;
    this.#restore();
  }

  /** The socket's absolute URL. */
  get url() {
    return this.#url;
  }

  /** @returns {ClientState} "open" once welcomed; "closed" before `connect()`, after `close()` */
  get state() {
    return this.#state;
  }

  /** @returns {Positions} a copy of the last position seen per channel */
  get positions() {
    /** @type {Positions} */
    const copy = {};
    for (const [channel, { epoch, offset }] of this.#positions) copy[channel] = { epoch, offset };
    return copy;
  }

  /** Start connecting (no-op unless "closed" or "failed"); reconnects until `close()`. */
  connect() {
    if (this.#state !== "closed" && this.#state !== "failed") return;
    this.#attempt = 0;
    this.#handshakeFailures = 0;
    this.#throttled = false;
    this.#networkDown = false;
    this.#reauthenticated = false;
    this.#state = "connecting";
    this.#network?.addEventListener("online", this.#onNetwork);
    this.#network?.addEventListener("offline", this.#onNetwork);
    this.#open();
  }

  /** Close the socket (code 1000) and stop reconnecting; queued sends are dropped. */
  close() {
    if (this.#state === "closed" || this.#state === "failed") return;
    const ws = this.#ws;
    this.#dials += 1; // a token still on its way is not used
    this.#forgetSocket();
    if (ws !== null) {
      try {
        ws.close(1000, "");
      } catch {
        // already closing
      }
    }
    const wasOnline = this.#setOffline();
    this.#stop("closed");
    this.#emit("close", { code: 1000, reason: "", willReconnect: false });
    if (wasOnline) this.#emit("offline", null);
  }

  /**
   * Send an application frame: a string or binary data as is, anything else as JSON.
   * While not connected it is queued or refused, as the `offline` option says.
   * @param {unknown} data
   * @throws {NotConnected} under the "reject" policy, or once the client is closed or failed
   * @throws {OfflineQueueFull} when `maxQueued` sends already wait
   */
  send(data) {
    if (this.#state === "closed" || this.#state === "failed") throw new NotConnected(this.#state);
    const frame = outbound(data);
    if (this.#state === "open" && this.#ws !== null) {
      this.#ws.send(frame);
      return;
    }
    if (this.#options.offline === "reject") throw new NotConnected(this.#state);
    if (this.#queue.length >= this.#options.maxQueued) {
      throw new OfflineQueueFull(this.#options.maxQueued);
    }
    this.#queue.push(frame);
  }

  /**
   * The newest kept messages of a channel (e.g. on page load, or after `recovered: false`).
   * Asked once the client is welcomed; rejects with a `HistoryError` on an `ag.error`, after
   * `historyTimeout`, when the socket drops with the request in flight, or on `close()`.
   * @param {string} channel
   * @param {number} [limit=50]
   * @returns {Promise<HistoryResult>}
   */
  history(channel, limit = 50) {
    if (this.#state === "closed" || this.#state === "failed") {
      return Promise.reject(new HistoryError("closed", `client ${this.#state}`, channel));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      /** @type {PendingHistory} */
      const request = { id, channel, limit, sent: false, timer: null, resolve, reject };
      const timeout = this.#options.historyTimeout;
      if (timeout > 0) {
        request.timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new HistoryError("timeout", `no answer in ${timeout} ms`, channel));
        }, timeout);
      }
      this.#pending.set(id, request);
      if (this.#state === "open") this.#sendHistory(request);
    });
  }

  /**
   * Refresh the socket's token now: calls the `token` option and sends the fresh token
   * (`ag.refresh`); the socket then lives until the new token lapses. The client does this by
   * itself before the token lapses; a page may call it after a new login, say.
   * Rejects with a `RefreshError`: the old expiry stands.
   * @returns {Promise<RefreshResult>}
   */
  refresh() {
    const ws = this.#ws;
    if (this.#token === null) {
      return Promise.reject(new RefreshError("no_token", "the client has no token option"));
    }
    if (this.#state === "closed" || this.#state === "failed") {
      return Promise.reject(new RefreshError("closed", `client ${this.#state}`));
    }
    if (this.#state !== "open" || ws === null) {
      return Promise.reject(new RefreshError("not_connected", `state ${this.#state}`));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      /** @type {PendingRefresh} */
      const request = { id, timer: null, resolve, reject };
      const timeout = this.#options.refreshTimeout;
      if (timeout > 0) {
        request.timer = setTimeout(() => {
          this.#settleRefresh(request, new RefreshError("timeout", `no answer in ${timeout} ms`));
        }, timeout);
      }
      this.#refreshes.set(id, request);
      this.#withToken(
        (token) => {
          if (this.#refreshes.get(id) !== request) return; // timed out or dropped meanwhile
          try {
            ws.send(JSON.stringify({ type: "ag.refresh", id, token }));
          } catch (error) {
            this.#settleRefresh(request, new RefreshError("disconnected", String(error)));
          }
        },
        (error) => {
          if (this.#refreshes.get(id) === request) this.#settleRefresh(request, error);
        },
      );
    });
  }

  /**
   * Listen to an event; the callback gets the event's detail.
   * @template {keyof GroupsClientEventMap} K
   * @param {K} name
   * @param {(detail: GroupsClientEventMap[K]) => void} callback
   * @returns {() => void} removes the listener
   */
  on(name, callback) {
    /** @param {Event} event */
    const listener = (event) =>
      callback(/** @type {CustomEvent<GroupsClientEventMap[K]>} */ (event).detail);
    this.addEventListener(name, listener);
    return () => this.removeEventListener(name, listener);
  }

  /**
   * @template {keyof GroupsClientEventMap} K
   * @param {K} name
   * @param {GroupsClientEventMap[K]} detail
   */
  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  #open() {
    this.#timer = null;
    this.#opened = false;
    this.#welcomed = false;
    const dial = ++this.#dials;
    if (this.#token === null) {
      this.#dial(this.#url, []);
      return;
    }
    this.#withToken(
      (token) => {
        if (dial !== this.#dials) return; // closed, or another attempt began meanwhile
        if (this.#options.tokenIn === "query") {
          const url = new URL(this.#url);
          url.searchParams.set(TOKEN_QUERY_PARAMETER, token);
          this.#dial(url.href, []);
        } else {
          this.#dial(this.#url, [TOKEN_SUBPROTOCOL_PREFIX + token]);
        }
      },
      (error) => {
        if (dial !== this.#dials) return;
        this.#emit("error", error);
        this.#closed(1006, error.message);
      },
    );
  }

  /**
   * Call the `token` option and hand its token on, at once when it gives a string, else when
   * its Promise resolves; a throw, a rejection or a token that is no string goes to `failed`.
   * @param {(token: string) => void} use
   * @param {(error: RefreshError) => void} failed
   */
  #withToken(use, failed) {
    /** @param {unknown} token */
    const take = (token) => {
      if (typeof token === "string" && token !== "") use(token);
      else failed(new RefreshError("token_failed", "the token option gave no token"));
    };
    /** @param {unknown} error */
    const fail = (error) => failed(new RefreshError("token_failed", String(error)));
    /** @type {unknown} */
    let result;
    try {
      result = /** @type {TokenSource} */ (this.#token)();
    } catch (error) {
      fail(error);
      return;
    }
    if (isObject(result) && typeof result.then === "function") {
      Promise.resolve(result).then(take, fail);
    } else {
      take(result);
    }
  }

  /**
   * @param {string} url
   * @param {string[]} protocols offered subprotocols (the token's, when it rides there)
   */
  #dial(url, protocols) {
    /** @type {SocketLike} */
    let ws;
    try {
      const { WebSocket } = this.#options;
      ws = protocols.length > 0 ? new WebSocket(url, protocols) : new WebSocket(url);
    } catch (error) {
      this.#closed(1006, String(error));
      return;
    }
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (this.#ws === ws) this.#opening(ws);
    };
    ws.onmessage = (event) => {
      if (this.#ws === ws) this.#frame(event.data);
    };
    ws.onclose = (event) => {
      if (this.#ws === ws) {
        this.#forgetSocket();
        this.#closed(event.code, event.reason);
      }
    };
    ws.onerror = () => {}; // a close event always follows
  }

  /** @param {SocketLike} ws */
  #opening(ws) {
    this.#opened = true;
    this.#handshakeFailures = 0;
    ws.send(JSON.stringify({ type: "ag.hello", positions: this.positions }));
    if (this.#options.helloTimeout > 0) {
      this.#helloTimer = setTimeout(() => {
        this.#helloTimer = null;
        this.#forgetSocket();
        try {
          ws.close(NO_WELCOME_CODE, "no welcome");
        } catch {
          // already closing
        }
        this.#closed(NO_WELCOME_CODE, "no welcome");
      }, this.#options.helloTimeout);
    }
    this.#emit("open", null);
  }

  /** Stop listening to the current socket (its late events are ignored). */
  #forgetSocket() {
    this.#ws = null;
    if (this.#helloTimer !== null) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
  }

  /**
   * The socket is gone: reconnect, wait, or stop, as its close code says.
   * @param {number} code
   * @param {string} reason
   */
  #closed(code, reason) {
    for (const request of this.#pending.values()) {
      if (request.sent) {
        this.#settle(
          request,
          new HistoryError("disconnected", "the socket closed", request.channel),
        );
      }
    }
    for (const request of this.#refreshes.values()) {
      this.#settleRefresh(request, new RefreshError("disconnected", "the socket closed"));
    }
    const wasOnline = this.#setOffline();
    // a lapsed token: one more try with a fresh one, unless the last try ended the same way
    const reauthenticate = code === UNAUTHORIZED && this.#token !== null && !this.#reauthenticated;
    if (reauthenticate) this.#reauthenticated = true;
    const terminal = TERMINAL_CODES.has(code) && !reauthenticate;
    const failed =
      !terminal && !this.#opened && ++this.#handshakeFailures >= this.#options.maxHandshakeFailures;
    const willReconnect = !terminal && !failed;
    if (willReconnect) {
      this.#state = "reconnecting";
      this.#schedule(THROTTLE_CODES.has(code));
    } else {
      this.#stop(failed ? "failed" : "closed");
    }
    this.#emit("close", { code, reason, willReconnect });
    if (wasOnline) this.#emit("offline", null);
    if (failed) this.#emit("error", new ConnectionFailed(this.#handshakeFailures));
  }

  /** @returns {boolean} whether the client was online */
  #setOffline() {
    const was = this.#online;
    this.#online = false;
    return was;
  }

  /** @param {boolean} throttled wait `maxDelay` rather than the backoff */
  #schedule(throttled) {
    this.#throttled = throttled;
    if (this.#networkDown) return; // the "online" event reconnects
    const { minDelay, maxDelay, jitter, random } = this.#options;
    const exponent = Math.min(this.#attempt, MAX_EXPONENT);
    this.#attempt += 1;
    let delay = maxDelay;
    if (!throttled) {
      delay = Math.min(maxDelay, minDelay * 2 ** exponent);
      if (jitter) delay *= random();
    }
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  /** @param {"closed" | "failed"} state */
  #stop(state) {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#queue = [];
    for (const request of this.#pending.values()) {
      this.#settle(request, new HistoryError("closed", `client ${state}`, request.channel));
    }
    for (const request of this.#refreshes.values()) {
      this.#settleRefresh(request, new RefreshError("closed", `client ${state}`));
    }
    this.#network?.removeEventListener("online", this.#onNetwork);
    this.#network?.removeEventListener("offline", this.#onNetwork);
    this.#state = state;
  }

  /** @param {Event} event */
  #onNetwork = (event) => {
    if (event.type === "offline") {
      this.#networkDown = true;
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = null;
      return;
    }
    this.#networkDown = false;
    if (this.#ws !== null || (this.#state !== "connecting" && this.#state !== "reconnecting")) {
      return;
    }
    if (this.#throttled) {
      if (this.#timer === null) this.#schedule(true);
      return;
    }
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#open();
  };

  /** @param {unknown} data */
  #frame(data) {
    if (typeof data === "string") {
      for (const document of splitFrame(data)) this.#document(document);
      return;
    }
    /** @type {unknown} */
    let bytes = data;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) {
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    }
    this.#emit("message", { channel: null, data: bytes, epoch: null, offset: null });
  }

  /** @param {Parsed} document */
  #document(document) {
    const { json, value } = document;
    if (!json || !isProtocolFrame(value)) {
      this.#emit("message", { channel: null, data: value, epoch: null, offset: null });
      return;
    }
    switch (value.type) {
      case "ag.welcome":
        this.#welcome(/** @type {Welcome} */ (/** @type {unknown} */ (value)));
        break;
      case "ag.message":
        this.#message(value);
        break;
      case "ag.history":
        this.#historyAnswer(value);
        break;
      case "ag.error":
        this.#error(value);
        break;
      case "ag.refreshed":
        this.#refreshed(value);
        break;
      default: // a newer protocol frame: not for the application
    }
  }

  /** @param {Welcome} welcome */
  #welcome(welcome) {
    const ws = this.#ws;
    if (this.#welcomed || ws === null) return;
    if (this.#helloTimer !== null) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    const channels = isObject(welcome.channels) ? welcome.channels : {};
    /** @type {Record<string, ChannelRecovery>} */
    const recovery = {};
    /** @type {Map<string, Position>} */
    const positions = new Map();
    for (const [channel, info] of Object.entries(channels)) {
      const held = this.#positions.get(channel);
      const recovered = isObject(info) && info.recovered === true;
      const reason = isObject(info) && typeof info.reason === "string" ? info.reason : null;
      if (isPosition(info)) positions.set(channel, { epoch: info.epoch, offset: info.offset });
      else if (held !== undefined && reason !== "not subscribed") positions.set(channel, held);
      recovery[channel] = { recovered, reason: recovered ? null : reason };
    }
    this.#positions = positions;
    this.#persist();
    this.#welcomed = true;
    this.#attempt = 0;
    this.#throttled = false;
    this.#state = "open";
    this.#online = true;
    this.#scheduleRefresh(welcome.expires_in);
    for (const frame of this.#queue.splice(0)) ws.send(frame);
    for (const request of this.#pending.values()) {
      if (!request.sent) this.#sendHistory(request);
    }
    const recovered =
      typeof welcome.recovered === "boolean"
        ? welcome.recovered
        : Object.values(recovery).every((channel) => channel.recovered);
    this.#emit("welcome", welcome);
    this.#emit("recovered", { recovered, channels: recovery });
    this.#emit("online", null);
  }

  /** @param {Record<string, unknown>} frame */
  #message(frame) {
    const { channel } = frame;
    if (typeof channel !== "string") return;
    /** @type {string | null} */
    let epoch = null;
    /** @type {number | null} */
    let offset = null;
    if (isPosition(frame)) {
      const held = this.#positions.get(channel);
      if (held !== undefined && held.epoch === frame.epoch && frame.offset <= held.offset) return;
      epoch = frame.epoch;
      offset = frame.offset;
      this.#positions.set(channel, { epoch, offset });
      this.#persist();
    }
    let data;
    try {
      data = decoded(frame);
    } catch {
      this.#emit("error", new ServerError("invalid", `bad base64 on ${channel}`, null));
      return;
    }
    this.#emit("message", { channel, data, epoch, offset });
  }

  /** @param {Record<string, unknown>} frame */
  #historyAnswer(frame) {
    const request = this.#pending.get(/** @type {number} */ (frame.id));
    if (request === undefined) return; // timed out, or not ours
    /** @type {HistoryMessage[]} */
    const messages = [];
    try {
      for (const item of Array.isArray(frame.messages) ? frame.messages : []) {
        const message = isObject(item) ? item : {};
        const offset = Number.isInteger(message.offset)
          ? /** @type {number} */ (message.offset)
          : null;
        messages.push({ offset, data: decoded(message) });
      }
    } catch {
      this.#settle(request, new HistoryError("invalid", "bad base64", request.channel));
      return;
    }
    this.#settle(request, {
      channel: typeof frame.channel === "string" ? frame.channel : request.channel,
      epoch: typeof frame.epoch === "string" ? frame.epoch : null,
      offset: Number.isInteger(frame.offset) ? /** @type {number} */ (frame.offset) : null,
      messages,
    });
  }

  /** @param {Record<string, unknown>} frame */
  #error(frame) {
    const code = typeof frame.error === "string" ? frame.error : "invalid";
    const detail = typeof frame.detail === "string" ? frame.detail : "";
    const request = this.#pending.get(/** @type {number} */ (frame.id));
    if (request !== undefined) {
      this.#settle(request, new HistoryError(code, detail, request.channel));
      return;
    }
    const refresh = this.#refreshes.get(/** @type {number} */ (frame.id));
    if (refresh !== undefined) {
      this.#settleRefresh(refresh, new RefreshError(code, detail));
      return;
    }
    const id = typeof frame.id === "string" || typeof frame.id === "number" ? frame.id : null;
    this.#emit("error", new ServerError(code, detail, id));
  }

  /** @param {Record<string, unknown>} frame */
  #refreshed(frame) {
    this.#reauthenticated = false;
    this.#scheduleRefresh(frame.expires_in);
    const result = /** @type {RefreshResult} */ (/** @type {unknown} */ (frame));
    const request = this.#refreshes.get(result.id);
    if (request !== undefined) this.#settleRefresh(request, result);
    this.#emit("refreshed", result);
  }

  /**
   * Refresh the token `refreshMargin` before it lapses in `expiresIn` seconds (but not before
   * half of that time); a refresh that fails is reported as an "error" event.
   * @param {unknown} expiresIn
   */
  #scheduleRefresh(expiresIn) {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (this.#token === null || typeof expiresIn !== "number" || !(expiresIn >= 0)) return;
    const remaining = expiresIn * 1000;
    const delay = Math.max(remaining - this.#options.refreshMargin, remaining / 2);
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      this.refresh().catch((/** @type {RefreshError} */ error) => {
        if (error.code !== "disconnected" && error.code !== "closed") this.#emit("error", error);
      });
    }, delay);
  }

  /**
   * @param {PendingRefresh} request
   * @param {RefreshResult | RefreshError} outcome
   */
  #settleRefresh(request, outcome) {
    if (request.timer !== null) clearTimeout(request.timer);
    this.#refreshes.delete(request.id);
    if (outcome instanceof RefreshError) request.reject(outcome);
    else request.resolve(outcome);
  }

  /** @param {PendingHistory} request */
  #sendHistory(request) {
    const { id, channel, limit } = request;
    this.#ws?.send(JSON.stringify({ type: "ag.history", id, channel, limit }));
    request.sent = true;
  }

  /**
   * @param {PendingHistory} request
   * @param {HistoryResult | HistoryError} outcome
   */
  #settle(request, outcome) {
    if (request.timer !== null) clearTimeout(request.timer);
    this.#pending.delete(request.id);
    if (outcome instanceof HistoryError) request.reject(outcome);
    else request.resolve(outcome);
  }

  /** Read the positions a previous page left in storage; anything malformed is ignored. */
  #restore() {
    if (this.#storage === null) return;
    try {
      const raw = this.#storage.getItem(this.#options.storageKey);
      const saved = raw ? JSON.parse(raw) : null;
      if (!isObject(saved)) return;
      for (const [channel, position] of Object.entries(saved)) {
        if (isPosition(position)) {
          this.#positions.set(channel, { epoch: position.epoch, offset: position.offset });
        }
      }
    } catch {
      // unreadable storage: start without positions
    }
  }

  #persist() {
    if (this.#storage === null) return;
    try {
      this.#storage.setItem(this.#options.storageKey, JSON.stringify(this.positions));
    } catch {
      // full or forbidden storage: positions stay in memory
    }
  }
}

export default GroupsClient;

/**
 * One JSON document of a frame, or a piece of text that is not JSON.
 * @typedef {{json: true, value: unknown} | {json: false, value: string}} Parsed
 */

const NOT_JSON = Symbol("not JSON");

/**
 * @param {string} text
 * @returns {unknown}
 */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return NOT_JSON;
  }
}

/**
 * @param {string} text
 * @returns {Parsed}
 */
function parsed(text) {
  const value = parseJson(text);
  return value === NOT_JSON ? { json: false, value: text } : { json: true, value };
}

/**
 * The documents of a text frame: a server may join several with "\n" (coalesced frames).
 * A multi-line frame that is not such a join (one pretty-printed document, or plain text)
 * stays whole.
 * @param {string} text
 * @returns {Parsed[]}
 */
function splitFrame(text) {
  if (!text.includes("\n")) return [parsed(text)];
  const parts = text.split("\n").map(parsed);
  if (parts.every((part) => part.json)) return parts;
  const whole = parsed(text);
  if (whole.json) return [whole];
  return parts.some((part) => part.json && isProtocolFrame(part.value)) ? parts : [whole];
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown> & {type: string}}
 */
function isProtocolFrame(value) {
  return isObject(value) && typeof value.type === "string" && value.type.startsWith("ag.");
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown> & Position}
 */
function isPosition(value) {
  return isObject(value) && typeof value.epoch === "string" && Number.isInteger(value.offset);
}

/**
 * The `data` of a message, base64 decoded to bytes when its `encoding` says so.
 * @param {Record<string, unknown>} message
 * @returns {unknown}
 */
function decoded(message) {
  if (message.encoding !== "base64" || typeof message.data !== "string") return message.data;
  const binary = atob(message.data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * What `send()` puts on the wire: strings and binary data as they are, the rest as JSON.
 * @param {unknown} data
 * @returns {string | ArrayBufferLike | ArrayBufferView | Blob}
 */
function outbound(data) {
  if (typeof data === "string" || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return data;
  }
  if (typeof Blob !== "undefined" && data instanceof Blob) return data;
  if (isProtocolFrame(data)) {
    throw new TypeError(`"${data.type}": frame types starting with "ag." belong to the protocol`);
  }
  const text = JSON.stringify(data);
  if (text === undefined) throw new TypeError(`cannot send ${typeof data} as JSON`);
  return text;
}

/**
 * The absolute ws(s) URL of `url`, relative ones resolved against the page.
 * @param {string | URL} url
 * @returns {string}
 */
function socketUrl(url) {
  const base = /** @type {any} */ (globalThis).location?.href;
  let resolved;
  try {
    resolved = base === undefined ? new URL(url) : new URL(url, base);
  } catch {
    throw new TypeError(`cannot resolve socket URL ${url} (a relative URL needs a page)`);
  }
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  else if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`not a WebSocket URL: ${resolved.href}`);
  }
  resolved.hash = "";
  return resolved.href;
}

/**
 * @param {string} name
 * @param {number} value
 * @returns {number}
 */
function nonNegative(name, value) {
  if (typeof value !== "number" || Number.isNaN(value) || value < 0) {
    throw new RangeError(`${name} must be a number >= 0, not ${value}`);
  }
  return value;
}

/**
 * @param {string} name
 * @param {number} value
 * @returns {number}
 */
function positive(name, value) {
  if (nonNegative(name, value) < 1) throw new RangeError(`${name} must be at least 1`);
  return value;
}
