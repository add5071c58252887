// hashsvc console: keyboard shortcuts, the preview's reveal, uploads with
// progress, and a hash list load's progress. No inline scripts (the CSP
// forbids them); text from the server is set with textContent, never HTML.
"use strict";

function typing(target) {
  return target.closest("input, textarea, select, [contenteditable]") !== null;
}

function csrfToken(form) {
  const field = form.querySelector('input[name="csrf_token"]');
  return field ? field.value : "";
}

document.addEventListener("keydown", (event) => {
  // a key that composes a character (an input method's) is typing too
  if (event.isComposing) return;
  const resolve = document.getElementById("resolve");
  if (resolve && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    resolve.requestSubmit();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  const pick = { c: "res-confirmed", f: "res-fp" }[event.key];
  if (pick && document.getElementById(pick)) {
    event.preventDefault();
    document.getElementById(pick).checked = true;
    document.getElementById("note").focus();
    return;
  }
  const target = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
  if (target) {
    event.preventDefault();
    target.click();
  }
});

function setUpReveal() {
  const button = document.getElementById("reveal");
  const image = document.getElementById("preview-img");
  if (!button || !image) return;
  button.addEventListener("click", () => {
    const veiled = image.classList.toggle("veiled");
    button.firstChild.textContent = veiled ? "Reveal " : "Hide ";
  });
}

function setUpConfirms() {
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

function uploadOne(form, file, labels, row) {
  return new Promise((resolve) => {
    const data = new FormData();
    data.append("csrf_token", csrfToken(form));
    data.append("labels", labels);
    data.append("files", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-CSRF-Token", csrfToken(form));
    const bar = row.querySelector("progress");
    const state = row.querySelector(".state");
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        bar.max = event.total;
        bar.value = event.loaded;
      }
    });
    request.addEventListener("load", () => {
      let text = `HTTP ${request.status}`;
      try {
        const result = JSON.parse(request.responseText).results[0];
        text = result.error ? `${result.error.code}: ${result.error.message}` : `added as ${result.entry} (${result.media_type})`;
        row.classList.add(result.error ? "failed" : "done");
      } catch (error) {
        row.classList.add("failed");
      }
      bar.value = bar.max;
      state.textContent = text;
      resolve();
    });
    request.addEventListener("error", () => {
      state.textContent = "network error";
      row.classList.add("failed");
      resolve();
    });
    request.send(data);
  });
}

function setUpUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  const input = document.getElementById("files");
  const zone = document.getElementById("dropzone");
  const list = document.getElementById("upload-progress");
  let dropped = [];
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    dropped = Array.from(event.dataTransfer.files);
    zone.dataset.count = `${dropped.length} file(s) dropped`;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = dropped.length ? dropped : Array.from(input.files);
    const labels = form.querySelector('textarea[name="labels"]').value;
    list.replaceChildren();
    for (const file of files) {
      const row = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = file.size || 1;
      bar.value = 0;
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = "waiting";
      row.append(name, bar, state);
      list.append(row);
    }
    const rows = Array.from(list.children);
    for (let k = 0; k < files.length; k++) {
      rows[k].querySelector(".state").textContent = "uploading";
      await uploadOne(form, files[k], labels, rows[k]);
    }
    dropped = [];
    form.dataset.finished = String(files.length);
  });
}

function setUpLoadProgress() {
  const job = document.getElementById("load-job");
  if (!job) return;
  const bar = document.getElementById("load-bar");
  const state = document.getElementById("load-state");
  const rejected = document.getElementById("rejected-rows");
  const poll = async () => {
    const answer = await fetch(job.dataset.progressUrl, { credentials: "same-origin" });
    if (!answer.ok) {
      state.textContent = `progress unavailable (HTTP ${answer.status})`;
      return;
    }
    const p = await answer.json();
    bar.max = p.total_bytes || 1;
    bar.value = p.read_bytes;
    if (p.done) {
      const r = p.result;
      state.textContent = p.error
        ? `Failed: ${p.error}`
        : `Done: ${r.added} added, ${r.updated} updated, ${r.removed} removed, ${r.unchanged} unchanged, ${p.rejected_count} rejected`;
      rejected.replaceChildren();
      for (const row of p.rejected) {
        const tr = document.createElement("tr");
        const line = document.createElement("td");
        line.className = "num";
        line.textContent = row.line;
        const reason = document.createElement("td");
        reason.textContent = row.reason;
        tr.append(line, reason);
        rejected.append(tr);
      }
      job.dataset.done = "true";
      return;
    }
    state.textContent = `${p.rows} rows read…`;
    setTimeout(poll, 500);
  };
  if (!bar.closest("#load-job").querySelector("#load-state").textContent.startsWith("Done")) poll();
  else job.dataset.done = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  setUpReveal();
  setUpConfirms();
  setUpUpload();
  setUpLoadProgress();
});
