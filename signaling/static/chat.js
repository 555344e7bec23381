// The chat panel: messages between the people and bots in the room, over the `meshpeer`
// data channel. Draws only; app.js sends and receives.

/** Lines kept in the panel; older ones go. */
const MAX_LINES = 200;
/** Characters of one message shown; the rest is cut (the message itself is whole). */
const MAX_SHOWN = 2000;

/** The SHA-256 of `bytes` in hex (tests compare messages by it). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** How a message shows in the panel: text as it is, bytes as their count. */
export function describe(data) {
  if (typeof data === "string") {
    return data.length > MAX_SHOWN ? `${data.slice(0, MAX_SHOWN)}…` : data;
  }
  return `<${data.byteLength} bytes>`;
}

export class ChatPanel {
  /** `onSend(text)` is called when the person sends; it answers whether anyone got it. */
  constructor(doc, onSend) {
    this.doc = doc;
    this.log = doc.getElementById("chat-log");
    this.form = doc.getElementById("chat-form");
    this.input = doc.getElementById("chat-input");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault(); // also what Enter in the field does
      const text = this.input.value;
      if (!text.trim()) return;
      if (onSend(text)) this.input.value = "";
    });
  }

  /** A message: `who` is a peer ID ("you" for ours), `label` a channel other than ours. */
  add(who, data, { label = null, own = false } = {}) {
    const from = label ? `${who} [${label}]` : who;
    const name = this.doc.createElement("span");
    name.className = "from";
    name.textContent = from;
    const line = this.doc.createElement("li");
    if (own) line.className = "own";
    line.append(name, `: ${describe(data)}`);
    this.#append(line);
  }

  /** A line from the page itself (a message that could not be delivered). */
  notice(text) {
    const line = this.doc.createElement("li");
    line.className = "system";
    line.textContent = text;
    this.#append(line);
  }

  setEnabled(enabled) {
    this.input.disabled = !enabled;
    this.form.querySelector("button").disabled = !enabled;
  }

  #append(line) {
    const log = this.log;
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
    log.append(line);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (atEnd) log.scrollTop = log.scrollHeight; // follow, unless the person scrolled up
  }
}
