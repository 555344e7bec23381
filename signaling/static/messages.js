// Plain words for everything that can go wrong, so people see what happened and what to do.

/** Text for an `error` frame from the server, by its stable `code`. */
export function serverErrorText(code, message, { peerId, room }) {
  const roomName = room ?? "default";
  switch (code) {
    case "id-taken":
      return `Someone in room “${roomName}” already uses the name “${peerId}”. Pick another name.`;
    case "room-full":
      return `Room “${roomName}” is full. Try again later or pick another room.`;
    case "bad-resume-token":
      return `Someone else took the name “${peerId}” while you were disconnected. Pick another name.`;
    case "auth-required":
      return `This room needs an invitation link. Ask whoever runs it for your own link to room “${roomName}” and open that.`;
    case "token-expired":
      return "Your invitation link has expired. Ask for a new one and open it.";
    case "invalid-token":
      return `Your invitation link is not valid for room “${roomName}” under the name “${peerId}”. Open the link exactly as you got it, or ask for a new one.`;
    case "unavailable":
      return "The server cannot reach its shared room service right now. This page keeps trying to join.";
    case "join-timeout":
      return "The server waited too long for this page to join. Reload the page to try again.";
    case "rate-limited":
      return "This page sent messages too fast and the server slowed it down.";
    case "frame-too-large":
      return "A message from this page was too large for the server.";
    case "bad-message":
      return `The server did not accept a message from this page: ${message}`;
    case "unknown-peer":
      return null; // a peer that just left: harmless, the peer list catches up by itself
    default:
      return `The server reported a problem: ${message || code}`;
  }
}

/** Close codes after which reconnecting cannot help (the server said why in an error frame).
 * 4407: the invitation (token) was refused; only opening a new link can help. */
export const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403, 4407, 4408, 4409, 4410]);

/** Error codes that end this page's attempts even if the close that follows is not one of
 * the above (a proxy or a dropped link turns it into 1006): the same token fails again. */
export const FINAL_ERROR_CODES = new Set(["auth-required", "token-expired", "invalid-token"]);

export function closeText(code) {
  if (code === 4407) return "The server did not accept this page's invitation link. Ask for a new one.";
  if (code === 4410) return "This name joined the room again from another page, so this page stopped.";
  if (code === 4508) return "The connection to the server was too slow and was dropped. Reconnecting…";
  if (code === 1001) return "The server is restarting. Reconnecting…";
  return "Lost the connection to the server. Reconnecting…";
}

/** Why there is no camera or microphone, for a getUserMedia failure. */
export function mediaErrorText(error) {
  const watching = "You can still watch and listen to the others.";
  switch (error?.name) {
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      return `Camera and microphone are blocked for this page. ${watching} To send video, allow them in the browser's site settings and reload.`;
    case "NotFoundError":
    case "DevicesNotFoundError":
      return `No camera or microphone was found. ${watching}`;
    case "NotReadableError":
    case "TrackStartError":
      return `The camera or microphone is busy (another program may be using it). ${watching}`;
    case "OverconstrainedError":
      return `The camera cannot deliver the requested picture. ${watching}`;
    case "InsecureContext":
      return `Browsers only give cameras to pages on https:// or localhost; this page is on plain http. ${watching}`;
    default:
      return `The camera could not be started (${error?.message || error}). ${watching}`;
  }
}
