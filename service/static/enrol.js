// Enrol: upload normal samples (files or one archive) to POST /enroll-object with upload progress,
// then follow the job (GET /jobs/{id}) until it ends: progress bar, stage, messages. A job that ends
// in needs_review shows the forgetting guard's numbers with Activate (POST /models/{v}/activate) and
// Discard. The API has no discard endpoint: discarding leaves the candidate inactive and only closes
// the review here.

import { describeError, getJson, postJson, upload } from "./api.js";
import { byId, confirmButton, formatDateTime, formatNumber, formatPercent, h, notify, viewLifecycle } from "./dom.js";

const POLL_MS = 1000;
const JOBS_REFRESH_MS = 5000;
const WATCH_STORAGE = "iumad-watched-job";
let objectName = null; // the API's own object-name pattern, read from its OpenAPI schema (never copied)
const OPEN = new Set(["queued", "running"]);

let watched = null; // {id, timer, log: [{at, stage, message}], outcome: null | "activated" | "discarded"}

// --- the form ----------------------------------------------------------------------------------

async function loadObjectNamePattern() {
  try {
    const schema = await getJson("/openapi.json");
    const form = schema.paths["/enroll-object"].post.requestBody.content["multipart/form-data"].schema;
    objectName = new RegExp(form.properties.object.pattern);
  } catch {
    objectName = null; // the gateway checks the name anyway (422 with the reason)
  }
}

function formData() {
  const object = byId("enrol-object").value.trim();
  const files = byId("enrol-files").files;
  const archive = byId("enrol-archive").files;
  if (objectName && !objectName.test(object)) {
    throw new Error("Object name: use 1-64 characters a-z, 0-9, '-' or '_', starting with a letter or digit.");
  }
  if (!files.length && !archive.length) {
    throw new Error("Choose the sample files or one archive.");
  }
  if (files.length && archive.length) {
    throw new Error("Choose either sample files or one archive, not both.");
  }
  const data = new FormData();
  data.append("object", object);
  data.append("holdout_fraction", byId("enrol-holdout").value || "0.1");
  data.append("target_false_reject_rate", byId("enrol-frr").value || "0.01");
  if (byId("enrol-replace").checked) {
    data.append("replace", "true");
  }
  if (archive.length) {
    data.append("archive", archive[0], archive[0].name);
  } else {
    for (const file of files) {
      data.append("files", file, file.name);
    }
  }
  return data;
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) {
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }
  return Math.max(1, Math.round(bytes / 1024)) + " kB";
}

async function submit(event) {
  event.preventDefault();
  const errorBox = byId("enrol-error");
  notify(errorBox, "");
  let data;
  try {
    data = formData();
  } catch (error) {
    notify(errorBox, error.message);
    return;
  }
  const button = byId("enrol-submit");
  const progress = byId("enrol-upload-progress");
  const text = byId("enrol-upload-text");
  byId("enrol-upload").hidden = false;
  progress.value = 0;
  text.textContent = "starting the upload…";
  button.disabled = true;
  try {
    const accepted = await upload("/enroll-object", data, (loaded, total) => {
      progress.value = total ? loaded / total : 0;
      text.textContent = `${formatBytes(loaded)} of ${formatBytes(total)}`;
      if (loaded === total) {
        text.textContent += " — checking the samples…";
      }
    });
    progress.value = 1;
    text.textContent = accepted.message;
    byId("enrol-form").reset();
    watch(accepted.job_id);
    refreshJobs();
  } catch (error) {
    text.textContent = "upload refused";
    notify(errorBox, describeError(error));
  } finally {
    button.disabled = false;
  }
}

// --- the watched job ---------------------------------------------------------------------------

function statusBadge(status) {
  const kind = { succeeded: "pass", failed: "fail", canceled: "fail", needs_review: "warn" }[status] || "info";
  return h("span", { class: "badge small " + kind, dataset: { status } }, status.replace("_", " "));
}

function guardTable(guard) {
  const rows = (guard.objects || []).map((item) =>
    h(
      "tr",
      { class: (guard.failed_objects || []).includes(item.object) ? "failed" : "" },
      h("th", { scope: "row" }, item.object),
      h("td", {}, formatNumber(item.parent_auroc)),
      h("td", {}, formatNumber(item.candidate_auroc)),
      h("td", {}, (item.drop > 0 ? "−" : "+") + formatNumber(Math.abs(item.drop))),
      h("td", {}, `${item.normals} / ${item.defects}`),
      h("td", {}, item.samples_from),
    ),
  );
  return h(
    "table",
    { class: "table guard" },
    h("caption", {}, `Forgetting guard: AUROC on the old objects (allowed drop ${formatNumber(guard.margin)})`),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Object", "Before (parent)", "After (candidate)", "Change", "Normal / defect parts", "Samples"].map(
          (label) => h("th", { scope: "col" }, label),
        ),
      ),
    ),
    h("tbody", {}, rows),
  );
}

function reviewSection(job) {
  const message = h("div", { class: "notice", role: "alert", hidden: true });
  const guard = job.forgetting_guard || {};
  const skipped = Object.entries(guard.skipped || {});
  if (watched && watched.outcome === "activated") {
    return h(
      "div",
      { class: "review" },
      h(
        "p",
        { class: "notice ok" },
        `Candidate ${job.version} activated: it is the active version now; gateways swap to it within about ` +
          "a second (see the header).",
      ),
    );
  }
  if (watched && watched.outcome === "discarded") {
    return h(
      "div",
      { class: "review" },
      h(
        "p",
        { class: "notice info" },
        `Discarded here: candidate ${job.version} stays on disk, inactive; the serving model is unchanged. ` +
          "(The API has no discard call: it can still be activated from the Models tab.)",
      ),
    );
  }
  return h(
    "div",
    { class: "review", id: "job-review" },
    h("h3", {}, "Needs review"),
    h("p", {}, guard.summary || job.message),
    guard.objects ? guardTable(guard) : null,
    skipped.length ? h("p", { class: "muted" }, "Not checked: " + skipped.map(([k, v]) => `${k} (${v})`).join("; ")) : null,
    h(
      "div",
      { class: "actions" },
      confirmButton(
        `Activate ${job.version}`,
        "Click again to activate",
        async () => {
          try {
            await postJson(`/models/${encodeURIComponent(job.version)}/activate`);
            watched.outcome = "activated";
            render(job);
            window.dispatchEvent(new CustomEvent("iumad-model-changed"));
          } catch (error) {
            notify(message, describeError(error));
          }
        },
        { class: "primary", id: "job-activate" },
      ),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          id: "job-discard",
          onclick: () => {
            watched.outcome = "discarded";
            render(job);
          },
        },
        "Discard (keep inactive)",
      ),
    ),
    message,
  );
}

// While a job runs: the latest time its version can be serving (its start plus its budget).
function servingBy(job) {
  if (!job.serving_by) {
    return OPEN.has(job.status) ? "when it starts: within its budget" : "—";
  }
  return `${formatDateTime(job.serving_by)} at the latest (usually sooner: training stops when converged)`;
}

function logLine(entry) {
  return h("li", {}, `${entry.at.toLocaleTimeString()} · ${entry.stage || "—"}: ${entry.message || ""}`);
}

// Progress, stage and messages change in place; the rest (buttons) only when the status changes, so
// a half-confirmed Cancel is not reset by the next poll.
function render(job) {
  const view = byId("job-view");
  const percent = Math.round(100 * (job.progress || 0));
  const log = watched ? watched.log : [];
  const last = log[log.length - 1];
  const added = !last || last.stage !== job.stage || last.message !== job.message;
  if (added) {
    log.push({ at: new Date(), stage: job.stage, message: job.message });
  }
  const structure = [job.job_id, job.status, job.version, watched && watched.outcome].join("|");
  if (view.dataset.structure === structure) {
    byId("job-progress").value = job.progress || 0;
    byId("job-percent").textContent = percent + " %";
    byId("job-stage").textContent = job.stage || "—";
    byId("job-message").textContent = job.message || "—";
    byId("job-serving-by").textContent = servingBy(job);
    view.querySelector("details.log summary").textContent = `Messages (${log.length})`;
    if (added) {
      view.querySelector("ol.messages").appendChild(logLine(log[log.length - 1]));
    }
    return;
  }
  view.dataset.structure = structure;
  const message = h("div", { class: "notice", role: "alert", hidden: true });
  const children = [
    h(
      "div",
      { class: "job-head" },
      h("strong", { class: "object" }, job.object),
      statusBadge(job.status),
      h("span", { class: "mono muted" }, job.job_id),
    ),
    h(
      "div",
      { class: "job-progress" },
      h("label", { for: "job-progress" }, "Progress"),
      h("progress", { id: "job-progress", max: "1", value: String(job.progress || 0) }),
      h("span", { id: "job-percent" }, percent + " %"),
    ),
    h(
      "dl",
      { class: "facts wide" },
      h("dt", {}, "Stage"),
      h("dd", { id: "job-stage" }, job.stage || "—"),
      h("dt", {}, "Message"),
      h("dd", { id: "job-message" }, job.message || "—"),
      h("dt", {}, "Serving by"),
      h("dd", { id: "job-serving-by" }, servingBy(job)),
      job.stop_reason ? [h("dt", {}, "Training stopped"), h("dd", {}, job.stop_reason)] : null,
      job.version ? [h("dt", {}, "Version"), h("dd", { class: "mono" }, job.version)] : null,
      job.parent ? [h("dt", {}, "Parent"), h("dd", { class: "mono" }, job.parent)] : null,
      job.enrolment && job.enrolment.train_samples !== undefined
        ? [
            h("dt", {}, "Samples (train / holdout)"),
            h("dd", {}, `${job.enrolment.train_samples} / ${job.enrolment.holdout_samples}`),
          ]
        : null,
    ),
  ];
  if (OPEN.has(job.status)) {
    children.push(
      h(
        "div",
        { class: "actions" },
        confirmButton(
          "Cancel job",
          "Click again to cancel",
          async () => {
            try {
              await postJson(`/jobs/${encodeURIComponent(job.job_id)}/cancel`);
              notify(message, "Cancel requested; the active model is unchanged.", "ok");
            } catch (error) {
              notify(message, describeError(error));
            }
          },
          { class: "secondary" },
        ),
      ),
    );
  }
  if (job.status === "succeeded") {
    children.push(h("p", { class: "notice ok" }, job.message));
  } else if (job.status === "failed") {
    children.push(h("p", { class: "notice error" }, job.message));
    children.push(
      h(
        "div",
        { class: "actions" },
        confirmButton("Retry", "Click again to train again on the stored samples", async () => {
          try {
            const retried = await postJson(`/jobs/${encodeURIComponent(job.job_id)}/retry`);
            watch(retried.job_id);
          } catch (error) {
            notify(message, describeError(error));
          }
        }),
      ),
    );
  } else if (job.status === "canceled") {
    children.push(h("p", { class: "notice error" }, job.message));
  } else if (job.status === "needs_review") {
    children.push(reviewSection(job));
  }
  children.push(message);
  children.push(
    h(
      "details",
      { class: "log" },
      h("summary", {}, `Messages (${log.length})`),
      h(
        "ol",
        { class: "messages" },
        log.map(logLine),
      ),
    ),
  );
  const open = view.querySelector("details.log");
  view.replaceChildren(...children);
  if (open && open.open) {
    view.querySelector("details.log").open = true;
  }
  byId("job-panel").hidden = false;
  byId("job-panel").dataset.status = job.status;
}

async function poll() {
  if (!watched) {
    return;
  }
  const id = watched.id;
  try {
    const job = await getJson("/jobs/" + encodeURIComponent(id));
    if (!watched || watched.id !== id) {
      return;
    }
    render(job);
    if (!OPEN.has(job.status)) {
      clearInterval(watched.timer);
      watched.timer = null;
      refreshJobs();
      if (job.status === "succeeded") {
        window.dispatchEvent(new CustomEvent("iumad-model-changed"));
      }
    }
  } catch (error) {
    notify(byId("enrol-error"), describeError(error));
    if (error.status === 404) {
      stopWatching();
    }
  }
}

function stopWatching() {
  if (watched && watched.timer) {
    clearInterval(watched.timer);
  }
  watched = null;
  sessionStorage.removeItem(WATCH_STORAGE);
}

function watch(id) {
  stopWatching();
  watched = { id, timer: setInterval(poll, POLL_MS), log: [], outcome: null };
  sessionStorage.setItem(WATCH_STORAGE, id);
  byId("job-panel").hidden = false;
  byId("job-view").dataset.structure = "";
  byId("job-view").replaceChildren(h("p", { class: "muted" }, "loading job " + id + "…"));
  poll();
}

// --- recent jobs -------------------------------------------------------------------------------

async function refreshJobs() {
  if (!lifecycle.isVisible()) {
    return;
  }
  const body = byId("jobs-table").querySelector("tbody");
  try {
    const answer = await getJson("/jobs?limit=10");
    notify(byId("jobs-error"), "");
    const rows = answer.jobs.map((job) =>
      h(
        "tr",
        { dataset: { jobId: job.job_id } },
        h("td", {}, formatDateTime(job.created_at)),
        h("td", {}, job.object),
        h("td", {}, statusBadge(job.status)),
        h("td", {}, formatPercent(job.progress, 0)),
        h("td", { class: "mono" }, job.version || "—"),
        h(
          "td",
          {},
          h("button", { type: "button", class: "secondary small", onclick: () => watch(job.job_id) }, "Show"),
        ),
      ),
    );
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "no jobs yet")));
    }
    body.replaceChildren(...rows);
  } catch (error) {
    notify(byId("jobs-error"), describeError(error));
  }
}

// Hiding the tab stops the job list's refresh; a watched job keeps being followed in the background.
const lifecycle = viewLifecycle({
  wire() {
    loadObjectNamePattern();
    byId("enrol-form").addEventListener("submit", submit);
    const saved = sessionStorage.getItem(WATCH_STORAGE);
    if (saved) {
      watch(saved);
    }
  },
  onShow: refreshJobs,
  tick: refreshJobs,
  intervalMs: JOBS_REFRESH_MS,
});
export const { show, hide } = lifecycle;
