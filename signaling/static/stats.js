// What the page reads from a connection's getStats(): how well it does (round-trip time and
// loss, as good/fair/poor) and how loud each side is (the speaking ring). Pure: reports in,
// figures out.

/** Above this audioLevel (0..1, linear; 1 is 0 dBov) someone is speaking: about -30 dBov. */
export const SPEAKING_LEVEL = 0.03;
/** A connection is "good" up to this round trip and loss, "fair" up to FAIR_*, else "poor". */
export const GOOD_RTT_MS = 150;
export const GOOD_LOSS_PERCENT = 2;
export const FAIR_RTT_MS = 400;
export const FAIR_LOSS_PERCENT = 10;

/** "good", "fair" or "poor"; an unknown round trip counts as good (loss alone decides). */
export function quality(rttMs, lossPercent) {
  const rtt = rttMs ?? 0;
  if (rtt <= GOOD_RTT_MS && lossPercent <= GOOD_LOSS_PERCENT) return "good";
  if (rtt <= FAIR_RTT_MS && lossPercent <= FAIR_LOSS_PERCENT) return "fair";
  return "poor";
}

/**
 * The figures of one getStats() report: {rttMs (null when unknown), received, lost (packets
 * received and lost so far, both kinds), remoteLevel (the peer's audio), localLevel (our
 * microphone)}.
 */
export function readReport(report) {
  const figures = { rttMs: null, received: 0, lost: 0, remoteLevel: 0, localLevel: 0 };
  let selectedPair = null;
  report.forEach((stat) => {
    if (stat.type === "transport" && stat.selectedCandidatePairId) {
      selectedPair = stat.selectedCandidatePairId;
    }
  });
  report.forEach((stat) => {
    switch (stat.type) {
      case "candidate-pair":
        if (stat.id === selectedPair || (!selectedPair && stat.nominated)) {
          if (typeof stat.currentRoundTripTime === "number") {
            figures.rttMs = stat.currentRoundTripTime * 1000;
          }
        }
        break;
      case "inbound-rtp":
        figures.received += stat.packetsReceived ?? 0;
        figures.lost += Math.max(0, stat.packetsLost ?? 0);
        if (stat.kind === "audio") {
          figures.remoteLevel = Math.max(figures.remoteLevel, stat.audioLevel ?? 0);
        }
        break;
      case "media-source":
        if (stat.kind === "audio") figures.localLevel = Math.max(figures.localLevel, stat.audioLevel ?? 0);
        break;
      default:
        break;
    }
  });
  return figures;
}

/** Per cent of packets lost between two readReport() figures (0 when nothing was due). */
export function lossBetween(before, after) {
  const received = after.received - (before?.received ?? 0);
  const lost = after.lost - (before?.lost ?? 0);
  const due = received + lost;
  return due > 0 ? (100 * Math.max(0, lost)) / due : 0;
}
