// What the page's address asks for: ?room=NAME&id=NAME&watch=1&token=JWT.

const MAX_NAME = 128;
/** Where this tab keeps its invitation (sessionStorage: this tab only, gone with it). */
const TOKEN_KEY = "meshpeer.invitation";

/** A random, readable peer ID for visitors who did not pick one. */
export function randomPeerId() {
  const bytes = new Uint8Array(3);
  crypto.getRandomValues(bytes);
  return "guest-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A name from the address, in NFC: the server refuses other spellings of a name (two
 * spellings of "é" would be two people who look alike). */
function cleanName(value) {
  const text = (value ?? "").trim().normalize("NFC");
  return text ? text.slice(0, MAX_NAME) : null;
}

function flag(value) {
  return value !== null && !["0", "false", "no", "off"].includes(value.toLowerCase());
}

/**
 * The claims of a JWT, read without checking its signature (only the server can): the page
 * uses them to fill in the name and room the invitation was made out for when the address
 * does not say, since the server refuses any other. Null when it is not a readable JWT.
 */
export function tokenClaims(token) {
  const part = (token ?? "").split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")), (c) =>
      c.charCodeAt(0),
    );
    const claims = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    return typeof claims === "object" && claims !== null && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

function claimName(value) {
  return typeof value === "string" && value && value.length <= MAX_NAME ? value : null;
}

/** The invitation in an address's query (`?token=`), null when none. */
export function queryToken(search) {
  return new URLSearchParams(search).get("token")?.trim() || null;
}

/**
 * This tab's invitation, read once. A `?token=` is taken out of the address at once
 * (history.replaceState: it stays out of the history, bookmarks, screen shares and what is
 * copied from the address bar) and kept in sessionStorage with the address it came with, so
 * a reload of that address still joins; any other address opened in the tab does not get it.
 * @param {Window} win the page's window (location, history, sessionStorage)
 * @returns {string|null}
 */
export function takeToken(win) {
  const address = new URL(win.location.href);
  const token = queryToken(address.search);
  address.searchParams.delete("token");
  const here = address.origin + address.pathname + address.search; // whatever the hash
  if (token) win.history.replaceState(win.history.state, "", address);
  try {
    if (token) {
      win.sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ here, token }));
    } else {
      const kept = JSON.parse(win.sessionStorage.getItem(TOKEN_KEY) ?? "null");
      if (kept?.here === here && typeof kept.token === "string") return kept.token;
    }
  } catch {
    // Storage refused (a privacy setting): this load has the token, a reload will not.
  }
  return token;
}

/**
 * @param {string} search location.search
 * @param {string|null} token the invitation (takeToken); by default the one in `search`
 * @returns {{room: string|null, peerId: string, chosenId: boolean, watch: boolean,
 *            token: string|null}}
 *   room null means the server's default room; token is the invitation (a JWT) the server
 *   wants in every join when it runs with access tokens, null when there is none.
 */
export function readParams(search, token = queryToken(search)) {
  const query = new URLSearchParams(search);
  const claims = token ? tokenClaims(token) : null;
  // The address wins over the token's claims: a mismatch is then the server's to explain.
  const id = cleanName(query.get("id")) ?? claimName(claims?.sub);
  return {
    room: cleanName(query.get("room")) ?? claimName(claims?.room),
    peerId: id ?? randomPeerId(),
    chosenId: id !== null,
    watch: flag(query.get("watch")),
    token,
  };
}

/**
 * The address of this page for another room/ID (keeps the other parameters). Never with a
 * token: a token names one person in one room, so it cannot serve another name or room.
 */
export function pageUrl(base, { room, peerId }) {
  const url = new URL(base);
  for (const name of ["room", "id", "token"]) url.searchParams.delete(name);
  if (room) url.searchParams.set("room", room);
  if (peerId) url.searchParams.set("id", peerId);
  return url.toString();
}

/**
 * The address others open to join `room`: the room only, never our ID (theirs must differ)
 * nor our token (it is personal: whoever holds it can join as us).
 */
export function inviteUrl(href, room) {
  const url = new URL(href);
  url.search = room ? `?${new URLSearchParams({ room })}` : "";
  url.hash = "";
  return url.toString();
}

/** ws:// or wss:// URL of the signaling endpoint next to this page. */
export function signalingUrl(pageHref, room = null) {
  const url = new URL("ws", pageHref);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = ""; // the token travels in the join frame, not in URLs that servers log
  url.hash = "";
  // The room (also in the join frame) lets a load balancer keep a room's members on one node.
  if (room) url.searchParams.set("room", room);
  return url.toString();
}

/** Where /config.json is for this page (the token goes in an Authorization header, never in
 * a URL that servers and proxies log). */
export function configUrl(pageHref) {
  const url = new URL("config.json", pageHref);
  url.search = "";
  url.hash = "";
  return url.toString();
}
