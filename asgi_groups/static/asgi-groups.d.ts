/**
 * Types of the asgi_groups browser client (asgi-groups.js): one WebSocket speaking the
 * recoverable protocol (docs/PROTOCOL.md), reconnecting and resuming every channel.
 */

export type ClientState = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export type OfflinePolicy = "queue" | "reject";

/** A place in one channel's history: `offset` counts the messages of the history named `epoch`. */
export interface Position {
  epoch: string;
  offset: number;
}

export type Positions = Record<string, Position>;

/** What the client needs of `sessionStorage` / `localStorage`. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** What the client needs of a WebSocket (the browser's, or a test double). */
export interface SocketLike {
  readyState: number;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: Event) => unknown) | null;
  onmessage: ((event: MessageEvent) => unknown) | null;
  onclose: ((event: CloseEvent) => unknown) | null;
  onerror: ((event: Event) => unknown) | null;
}

export type SocketConstructor = new (url: string, protocols?: string[]) => SocketLike;

/** Where the token goes in the handshake. */
export type TokenPlacement = "subprotocol" | "query";

/**
 * Gives the token the socket authenticates with: called before every (re)connect and every
 * refresh, so that it can fetch a fresh one.
 */
export type TokenSource = () => string | PromiseLike<string>;

/** One channel of an `ag.welcome`: where its stream continues from, whether it was recovered. */
export interface WelcomeChannel {
  epoch?: string;
  offset?: number;
  recovered: boolean;
  reason?: string;
}

/** The server's answer to the hello (the `welcome` event's detail, as received). */
export interface Welcome {
  type: "ag.welcome";
  connection: string;
  user: string | null;
  recovered: boolean;
  channels: Record<string, WelcomeChannel>;
  /** Seconds until the socket's credential lapses (a token); absent when it never does. */
  expires_in?: number;
}

/** The server's answer to a refresh: the socket now lives until `expires_at` (Unix seconds). */
export interface RefreshResult {
  type: "ag.refreshed";
  id: number;
  expires_at: number | null;
  /** Seconds left, by the server's clock. */
  expires_in: number | null;
}

export interface ChannelRecovery {
  recovered: boolean;
  /** Why not (null when recovered), e.g. "epoch changed". */
  reason: string | null;
}

/** Detail of the `recovered` event: `recovered: false` means the page should reload its state. */
export interface RecoveredDetail {
  recovered: boolean;
  channels: Record<string, ChannelRecovery>;
}

/**
 * Detail of the `message` event; `channel`, `epoch` and `offset` are null for frames that are
 * not `ag.message` (the application's own frames), `epoch` and `offset` for channels without
 * history.
 */
export interface MessageDetail {
  channel: string | null;
  /** A JSON value, a string, or a Uint8Array for binary messages. */
  data: unknown;
  epoch: string | null;
  offset: number | null;
}

/** Detail of the `close` event, fired each time a socket goes away. */
export interface CloseDetail {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface HistoryMessage {
  offset: number | null;
  data: unknown;
}

/** The answer to `history()`: the newest kept messages of a channel, oldest first. */
export interface HistoryResult {
  channel: string;
  /** The channel's newest position. */
  epoch: string | null;
  offset: number | null;
  messages: HistoryMessage[];
}

/** Options of `GroupsClient`; every limit has a default. */
export interface GroupsClientOptions {
  /** First reconnect delay (ms); doubles per attempt that reached no welcome. Default 500. */
  minDelay?: number;
  /** Cap of the reconnect delay (ms); also the wait after a close with 4408/4429. Default 30000. */
  maxDelay?: number;
  /** Full jitter: wait a random time in [0, delay]. Default true. */
  jitter?: boolean;
  /**
   * Sockets in a row closed before opening after which the client stops ("failed"). Default
   * Infinity: a browser cannot tell a refused handshake from a server that is down.
   */
  maxHandshakeFailures?: number;
  /** Keeps positions across a page reload (e.g. sessionStorage). Default none. */
  storage?: StorageLike | null;
  /** Key in `storage`. Default "asgi-groups:positions:" + the socket URL without its query. */
  storageKey?: string;
  /** What `send()` does while not connected: queue it, or throw `NotConnected`. Default "queue". */
  offline?: OfflinePolicy;
  /** Sends kept while offline; one more throws `OfflineQueueFull`. Default 100. */
  maxQueued?: number;
  /** Ms to wait for the welcome after the hello, then reconnect; 0 waits forever. Default 10000. */
  helloTimeout?: number;
  /** Ms a `history()` request may take; 0: no limit. Default 10000. */
  historyTimeout?: number;
  /** The socket class. Default `globalThis.WebSocket`. */
  WebSocket?: SocketConstructor;
  /** Source of "online" / "offline" events. Default `window` where there is one; null for none. */
  network?: EventTarget | null;
  /** Source of the jitter, in [0, 1). Default Math.random. */
  random?: () => number;
  /**
   * The socket authenticates with the token it gives, called before every (re)connect; the
   * client refreshes it on the open socket before it lapses (the welcome's `expires_in`), and
   * a close with 4401 reconnects once with a fresh one rather than stopping. Default none.
   */
  token?: TokenSource | null;
  /**
   * Where the token goes: an offered subprotocol "bearer.<token>" (`SubprotocolToken`), or the
   * query parameter "access_token" (`QueryToken`). Default "subprotocol".
   */
  tokenIn?: TokenPlacement;
  /** Refresh the token this many ms before it lapses, not before half its time. Default 30000. */
  refreshMargin?: number;
  /** Ms a refresh may take; 0: no limit. Default 10000. */
  refreshTimeout?: number;
}

/** Events and their `detail` (also the argument of an `on()` callback). */
export interface GroupsClientEventMap {
  /** A socket opened (the hello is sent; not usable until welcome). */
  open: null;
  welcome: Welcome;
  recovered: RecoveredDetail;
  message: MessageDetail;
  close: CloseDetail;
  /** The client is welcomed (after being offline, or at first). */
  online: null;
  /** The socket dropped (after a welcome). */
  offline: null;
  /** The server took a fresh token: the socket lives on. */
  refreshed: RefreshResult;
  error: GroupsError;
}

/** Base class of the errors the client throws, rejects with or reports. */
export class GroupsError extends Error {
  constructor(code: string, message: string);
  /** Machine-readable kind, e.g. "queue_full" or "forbidden". */
  code: string;
}

/** `send()` while not connected, under the "reject" policy or after the client stopped. */
export class NotConnected extends GroupsError {
  constructor(state: ClientState);
  state: ClientState;
}

/** `send()` while offline with `maxQueued` sends already waiting. */
export class OfflineQueueFull extends GroupsError {
  constructor(limit: number);
  limit: number;
}

/**
 * A `history()` request that failed: `code` is the server's error ("invalid", "forbidden",
 * "no_history", "unavailable") or "timeout", "disconnected" (the socket dropped) or "closed".
 */
export class HistoryError extends GroupsError {
  constructor(code: string, detail: string, channel: string);
  detail: string;
  channel: string;
}

/** An `ag.error` frame that answers no pending request (the `error` event's detail). */
export class ServerError extends GroupsError {
  constructor(code: string, detail: string, id: string | number | null);
  detail: string;
  id: string | number | null;
}

/**
 * A token refresh that failed: `code` is the server's error ("refresh_refused",
 * "refresh_failed") or "timeout", "disconnected", "closed", "not_connected", "no_token" or
 * "token_failed" (the `token` option threw or gave no string). The old expiry stands.
 */
export class RefreshError extends GroupsError {
  constructor(code: string, detail: string);
  detail: string;
}

/** The client gave up after `maxHandshakeFailures` sockets in a row closed before opening. */
export class ConnectionFailed extends GroupsError {
  constructor(failures: number);
  failures: number;
}

/** A real-time connection to an asgi_groups `RecoverableView`, kept up across drops. */
export class GroupsClient extends EventTarget {
  /**
   * @param url the socket's URL; a relative one ("/ws") is resolved against the page,
   *   http(s) becomes ws(s)
   */
  constructor(url: string | URL, options?: GroupsClientOptions);
  /** The socket's absolute URL. */
  get url(): string;
  /** "open" once welcomed; "closed" before `connect()` and after `close()`. */
  get state(): ClientState;
  /** A copy of the last position seen per channel. */
  get positions(): Positions;
  /** Start connecting (no-op unless "closed" or "failed"); reconnects until `close()`. */
  connect(): void;
  /** Close the socket (code 1000) and stop reconnecting; queued sends are dropped. */
  close(): void;
  /**
   * Send an application frame: a string or binary data as is, anything else as JSON.
   * @throws {NotConnected} under the "reject" policy, or once the client is closed or failed
   * @throws {OfflineQueueFull} when `maxQueued` sends already wait
   */
  send(data: unknown): void;
  /** The newest kept messages of a channel; rejects with a `HistoryError`. */
  history(channel: string, limit?: number): Promise<HistoryResult>;
  /**
   * Refresh the socket's token now (the client also does it by itself before it lapses);
   * rejects with a `RefreshError`, and the old expiry stands.
   */
  refresh(): Promise<RefreshResult>;
  /** Listen to an event; the callback gets the event's detail. Returns the unsubscribe. */
  on<K extends keyof GroupsClientEventMap>(
    name: K,
    callback: (detail: GroupsClientEventMap[K]) => void,
  ): () => void;
  addEventListener<K extends keyof GroupsClientEventMap>(
    type: K,
    listener: (event: CustomEvent<GroupsClientEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof GroupsClientEventMap>(
    type: K,
    listener: (event: CustomEvent<GroupsClientEventMap[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export default GroupsClient;
