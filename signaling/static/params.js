// What the page's address asks for: ?room=NAME&id=NAME&watch=1.

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
 * @param {string} search location.search
 * @returns {{room: string|null, peerId: string, chosenId: boolean, watch: boolean}}
 *   room null means the server's default room.
 */
export function readParams(search) {
  const query = new URLSearchParams(search);
  const id = cleanName(query.get("id"));
  return {
    room: cleanName(query.get("room")),
    peerId: id ?? randomPeerId(),
    chosenId: id !== null,
    watch: flag(query.get("watch")),
  };
}

/** The address of this page for another room/ID (keeps the other parameters). */
export function pageUrl(base, { room, peerId }) {
  const url = new URL(base);
  url.searchParams.delete("room");
  url.searchParams.delete("id");
  if (room) url.searchParams.set("room", room);
  if (peerId) url.searchParams.set("id", peerId);
  return url.toString();
}

/** ws:// or wss:// URL of the signaling endpoint next to this page. */
export function signalingUrl(pageHref) {
  const url = new URL("ws", pageHref);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}
