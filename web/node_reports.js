// PFP node reports: what a node sends as ui text (encoder info, run summary, plan, token counts) shown on the node.
// The stock front end does not display ui text, so each PFP node gets a read-only box, reserved at creation so
// that a workflow's layout does not change when the first report arrives. Text goes in through textContent only.
import { app } from "../../scripts/app.js";

const WIDGET_NAME = "pfp_report";
const LINE_PX = 15;
// Lines reserved per node; the Storyboard node draws its plan as the timeline instead.
const LINES = {
  PFPLoadMemoryEncoder: 2, PFPAutoregressiveSampler: 4, PFPPlan: 12, PFPCompressHistory: 2,
  PFPSaveMemory: 2, PFPLoadMemory: 2,
};
const STYLE = `
.pfp-report { box-sizing: border-box; height: 100%; overflow: auto; padding: 3px 5px; border-radius: 4px;
  font: 11px/${LINE_PX}px monospace; white-space: pre-wrap; word-break: break-word;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, rgba(0, 0, 0, 0.25)); }
.pfp-report.empty { opacity: 0.55; font-style: italic; }
`;

function injectStyle() {
  if (document.getElementById("pfp-report-style")) return;
  const style = document.createElement("style");
  style.id = "pfp-report-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function attachReport(node, lines) {
  injectStyle();
  const box = document.createElement("div");
  box.className = "pfp-report empty";
  box.textContent = "report appears here after a run";
  const height = lines * LINE_PX + 8;
  const widget = node.addDOMWidget(WIDGET_NAME, "pfp-report", box, {
    serialize: false, getMinHeight: () => height, getMaxHeight: () => height,
  });
  widget.serialize = false; // not an input, and not in widgets_values
  node.pfpReport = box;
}

function showReport(node, text) {
  if (!node.pfpReport || !text) return;
  node.pfpReport.classList.remove("empty");
  node.pfpReport.textContent = text;
}

app.registerExtension({
  name: "pfp.nodeReports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const lines = LINES[nodeData.name];
    if (!lines) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      attachReport(this, lines);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      showReport(this, (output?.text ?? []).join("\n"));
      return result;
    };
  },
});
