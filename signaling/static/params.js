// What the page's address asks for: ?room=NAME&id=NAME&watch=1&token=JWT.

const MAX_NAME = 128;

/** A random, readable peer ID for visitors who did not pick one. */
export function randomPeerId() {
  const bytes = new Uint8Array(3);
  crypto.getRandomValues(bytes);
  return "guest-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function cleanName(value) {
  const text = (value ?? "").trim();
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

/**
 * @param {string} search location.search
 * @returns {{room: string|null, peerId: string, chosenId: boolean, watch: boolean,
 *            token: string|null}}
 *   room null means the server's default room; token is the invitation (a JWT) the server
 *   wants in every join when it runs with access tokens, null when the address has none.
 */
export function readParams(search) {
  const query = new URLSearchParams(search);
  const token = query.get("token")?.trim() || null;
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

/** Where /config.json is for this page, with the token when the server wants one. */
export function configUrl(pageHref, token) {
  const url = new URL("config.json", pageHref);
  url.search = token ? `?${new URLSearchParams({ token })}` : "";
  url.hash = "";
  return url.toString();
}
