// PFP Storyboard timeline: draws the per-chunk plan of a "PFP Storyboard Prompt" node under its widgets.
//
// The plan comes from the server (POST /pfp/storyboard/plan), which runs the node's own planning code, so the
// timeline always shows exactly what the node will generate; nothing is parsed here.
// Safety: every piece of user text goes into the DOM through textContent / title, never innerHTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "PFPStoryboardPrompt";
const SAMPLER_ID = "PFPAutoregressiveSampler";
const FRAMES_ID = "PFPVideoFrames";
const IMAGE_SOURCES = ["LoadImage", "PFPProceduralImage"];
const START_CLIP_COLOUR = "#2a2d31";
const WIDGET_NAME = "pfp_timeline";
const WATCHED = ["storyboard", "global_prompt", "seconds", "fps", "chunk_seconds"];
const DEBOUNCE_MS = 250;
const HEIGHT = 112; // px; long errors and labels scroll or ellipsize inside it

const STYLE = `
.pfp-timeline { box-sizing: border-box; height: 100%; overflow: auto; padding: 4px 2px;
  font: 11px/1.3 sans-serif; color: var(--input-text, #ddd); }
.pfp-timeline-summary { opacity: 0.7; margin-bottom: 3px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.pfp-timeline-bar { display: flex; height: 64px; border-radius: 4px; overflow: hidden;
  border: 1px solid rgba(255, 255, 255, 0.25); }
.pfp-timeline-seg { position: relative; flex-basis: 0; min-width: 0; padding: 3px 4px; overflow: hidden;
  color: #eef1f4; border-right: 2px solid rgba(0, 0, 0, 0.6); }
.pfp-timeline-tick { position: absolute; top: 0; height: 5px; width: 1px; background: rgba(255, 255, 255, 0.35); }
.pfp-timeline-seg:last-child { border-right: none; }
.pfp-timeline-seg.start-clip { opacity: 0.7; font-style: italic; }
.pfp-timeline-time { font-weight: bold; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.pfp-timeline-prompt { overflow: hidden; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical;
  word-break: break-word; }
.pfp-timeline-error { color: #ff6b6b; font-weight: bold; white-space: pre-wrap; word-break: break-word; }
.pfp-timeline-lines { margin-top: 4px; font-family: monospace; white-space: pre; overflow-x: auto; }
.pfp-timeline-line { opacity: 0.6; }
.pfp-timeline-line.bad { opacity: 1; background: rgba(255, 60, 60, 0.35); color: #fff; outline: 1px solid #ff6b6b; }
.pfp-timeline-note { opacity: 0.6; font-style: italic; }
`;

function injectStyle() {
  if (document.getElementById("pfp-timeline-style")) return;
  const style = document.createElement("style");
  style.id = "pfp-timeline-style";
  style.textContent = STYLE; // our own constant CSS, no user text
  document.head.appendChild(style);
}

// createElement + textContent only: text is never parsed as HTML.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtSeconds(s) {
  return `${Number(s.toFixed(3))}s`;
}

// Neutral slate tones, distinct for neighbouring prompts (no hue that reads as an error or a warning).
const TONES = ["#3b4a5c", "#4f5b52", "#5a5266", "#4b5563", "#605a4a", "#44575c"];
function colourFor(index) {
  return TONES[index % TONES.length];
}

// Consecutive chunks with the same prompt form one segment, so labels stay readable at any number of chunks.
function segmentsOf(chunks) {
  const segments = [];
  for (const chunk of chunks) {
    const last = segments[segments.length - 1];
    if (last && last.prompt === chunk.prompt) last.chunks.push(chunk);
    else segments.push({ prompt: chunk.prompt, label: chunk.label ?? chunk.prompt, line: chunk.segment_line,
      startClip: !!chunk.startClip, chunks: [chunk] });
  }
  return segments;
}

// Seconds of video the sampler fed by this storyboard starts from, when the graph tells: the whole output of an
// upstream PFP sampler (through PFP Video Frames), or 0 for a start image; null when only the run can tell.
function startSeconds(node) {
  const sampler = node.getOutputNodes?.(0)?.find((n) => n.type === SAMPLER_ID);
  const source = sampler?.getInputNode(sampler.findInputSlot("start_image"));
  if (!source) return null;
  if (source.type !== FRAMES_ID) return IMAGE_SOURCES.includes(source.type) ? 0 : null;
  const upstream = source.getInputNode(source.findInputSlot("video"));
  const board = upstream?.type === SAMPLER_ID ? upstream.getInputNode(upstream.findInputSlot("storyboard")) : null;
  const whole = board ? Number(widgetValue(board, "seconds")) : NaN;
  const [from, length] = [Number(widgetValue(source, "start_seconds")), Number(widgetValue(source, "seconds"))];
  const seconds = length > 0 ? length : whole - from;
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

// Chunks the start clip covers are not generated: they become one "start clip" segment.
function withStartClip(chunks, seconds) {
  const covered = chunks.filter((c) => c.end <= seconds + 1e-6);
  if (!covered.length) return chunks;
  const clip = { prompt: "\u0000start", label: "start clip (not generated)", segment_line: null, startClip: true };
  return [...covered.map((c) => ({ ...c, ...clip })), ...chunks.slice(covered.length)];
}

function renderPlan(root, chunks, globalPrompt) {
  root.replaceChildren();
  const generated = chunks.filter((c) => !c.startClip);
  const prompts = [...new Set(generated.map((c) => c.prompt))];
  const total = chunks.length ? chunks[chunks.length - 1].end : 0;
  const step = chunks.length ? chunks[0].end - chunks[0].start : 0;
  const span = generated.length ? `${fmtSeconds(generated[0].start)}–${fmtSeconds(total)}` : "nothing";
  root.appendChild(el("div", "pfp-timeline-summary",
    `${generated.length} chunk${generated.length === 1 ? "" : "s"} of ${fmtSeconds(step)} · ${span} generated · ` +
    `${prompts.length} prompt${prompts.length === 1 ? "" : "s"}` + (globalPrompt ? ` · global: ${globalPrompt}` : "")));
  const bar = el("div", "pfp-timeline-bar");
  for (const segment of segmentsOf(chunks)) {
    const first = segment.chunks[0], last = segment.chunks[segment.chunks.length - 1];
    const seg = el("div", "pfp-timeline-seg");
    seg.dataset.chunks = `${first.index}-${last.index}`;
    seg.style.flexGrow = String(last.end - first.start); // width proportional to duration
    seg.style.background = segment.startClip ? START_CLIP_COLOUR : colourFor(prompts.indexOf(segment.prompt));
    if (segment.startClip) seg.classList.add("start-clip");
    const range = `${fmtSeconds(first.start)}–${fmtSeconds(last.end)}`;
    const count = segment.chunks.length;
    seg.title = `${range}, chunk${count === 1 ? ` ${first.index}` : `s ${first.index}–${last.index}`}` +
      `${segment.line ? ` (line ${segment.line})` : ""}\n${segment.prompt}`; // an attribute: shown as plain text
    seg.appendChild(el("div", "pfp-timeline-time", range));
    seg.appendChild(el("div", "pfp-timeline-prompt", segment.label));
    for (const chunk of segment.chunks.slice(1)) { // chunk boundaries as ticks inside the segment
      const tick = el("div", "pfp-timeline-tick");
      tick.style.left = `${(100 * (chunk.start - first.start)) / (last.end - first.start)}%`;
      seg.appendChild(tick);
    }
    bar.appendChild(seg);
  }
  root.appendChild(bar);
}

// The error, then the offending storyboard line with one line of context either side, highlighted.
function renderError(root, message, line, storyboard) {
  root.replaceChildren();
  root.appendChild(el("div", "pfp-timeline-error", message));
  if (!line) return;
  // Split like Python's str.splitlines, so line N here is the server's line N.
  const lines = storyboard.split(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/);
  const box = el("div", "pfp-timeline-lines");
  for (let n = Math.max(1, line - 1); n <= Math.min(lines.length, line + 1); n++) {
    const row = el("div", n === line ? "pfp-timeline-line bad" : "pfp-timeline-line", `${n} │ ${lines[n - 1]}`);
    if (n === line) row.dataset.line = String(n);
    box.appendChild(row);
  }
  root.appendChild(box);
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function attachTimeline(node) {
  injectStyle();
  const root = el("div", "pfp-timeline");
  root.appendChild(el("div", "pfp-timeline-note", "planning…"));
  const widget = node.addDOMWidget(WIDGET_NAME, "pfp-timeline", root, {
    serialize: false, // not a node input: keep it out of the prompt sent to /prompt
    getMinHeight: () => HEIGHT,
    getMaxHeight: () => HEIGHT,
  });
  widget.serialize = false; // ...and out of the workflow's widgets_values

  let timer = null;
  let latest = 0; // answers arrive out of order; only the newest request may draw

  async function refresh() {
    const ticket = ++latest;
    const body = {};
    for (const name of WATCHED) body[name] = widgetValue(node, name);
    let answer;
    try {
      const response = await api.fetchApi("/pfp/storyboard/plan", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      answer = await response.json();
    } catch (error) {
      answer = { error: `timeline unavailable: ${error}`, line: null };
    }
    if (ticket !== latest) return;
    if (answer.chunks) renderPlan(root, withStartClip(answer.chunks, startSeconds(node) ?? 0), answer.global_prompt);
    else renderError(root, answer.error ?? "timeline unavailable", answer.line, String(body.storyboard ?? ""));
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  for (const name of WATCHED) {
    const w = node.widgets?.find((x) => x.name === name);
    if (!w) continue;
    const callback = w.callback;
    w.callback = function (...args) {
      const result = callback?.apply(this, args);
      schedule();
      return result;
    };
    // The multiline widget's textarea: redraw while typing even if a front-end version stops calling callback.
    w.inputEl?.addEventListener("input", schedule);
  }

  const onConfigure = node.onConfigure;
  node.onConfigure = function (...args) { // a loaded workflow sets the number widgets without callbacks
    const result = onConfigure?.apply(this, args);
    schedule();
    return result;
  };
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) { // a new start clip upstream changes what is generated
    const result = onConnectionsChange?.apply(this, args);
    schedule();
    return result;
  };
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    clearTimeout(timer);
    return onRemoved?.apply(this, args);
  };
  node.pfpTimelineRefresh = refresh; // for tests and debugging
  schedule();
}

app.registerExtension({
  name: "pfp.storyboardTimeline",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_ID) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      attachTimeline(this);
      return result;
    };
  },
});
