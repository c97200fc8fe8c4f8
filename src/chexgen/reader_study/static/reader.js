// The reading view: loads the rater's current item from the server, records the
// answer by mouse or keyboard, posts it (one saved answer per post), moves on.
// All state lives on the server, so a reload or another device resumes exactly.
(function () {
  "use strict";
  var app = document.getElementById("app");
  var tasks = app.dataset.tasks.split(",");
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var $ = function (id) { return document.getElementById(id); };
  var st = {total: +app.dataset.total, answered: +app.dataset.done, pos: null, item: null,
            draft: {}, shownAt: 0, saving: false, revising: false};

  var viewer = new window.ReaderViewer($("viewer"), function (v) {
    $("wl").textContent = "W " + v.width + " / L " + v.level + (v.inverted ? " · inverted" : "");
    $("zoom").textContent = Math.round(v.zoom * 100) + "%";
  });

  function status(text, isError) {
    var el = $("status"); el.textContent = text || ""; el.className = isError ? "error" : "";
  }

  function api(method, url, body) {
    var opts = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401) { window.location.href = "/login"; }
        if (!r.ok) { var e = new Error(data.detail || ("error " + r.status)); e.status = r.status; throw e; }
        return data;
      });
    });
  }

  function showProgress() {
    $("progress").textContent = st.answered + " / " + st.total;
    $("item-number").textContent = st.pos === null ? "" : "Item " + (st.pos + 1) + " of " + st.total;
    $("back").disabled = !st.pos;
    $("forward").disabled = st.pos === null || st.pos >= st.answered;
  }

  function paint() {
    document.querySelectorAll(".choice").forEach(function (b) {
      b.classList.toggle("selected", String(st.draft[b.dataset.field]) === b.dataset.value);
    });
    if ($("quality")) { $("quality").checked = !!st.draft.quality_unacceptable; }
    $("save").firstChild.textContent = st.revising ? "Change answer " : "Save & next ";
  }

  function load(pos) {
    if (pos === null || pos >= st.total) { finished(); return Promise.resolve(); }
    status("Loading…");
    return api("GET", "/api/item/" + pos).then(function (d) {
      st.pos = d.position; st.item = d.item; st.answered = d.answered;
      st.revising = !!d.answer;
      st.draft = d.answer ? Object.assign({}, d.answer) : {};
      $("done").hidden = true; $("form").hidden = false;
      $("report").textContent = d.text;
      if ($("comment")) { $("comment").value = (d.answer && d.answer.comment) || ""; }
      paint(); showProgress();
      return viewer.load(d.image).then(function () {
        st.shownAt = Date.now();
        status(st.revising ? "You answered this item already; changing it is logged." : "");
        document.body.dataset.ready = String(d.position);
      });
    }).catch(function (e) { status(e.message, true); });
  }

  function finished() {
    st.pos = null; showProgress();
    $("form").hidden = true; $("done").hidden = false;
    document.body.dataset.ready = "done";
  }

  function choose(field, value) {
    st.draft[field] = (field === "realism") ? value : Number(value);
    paint();
  }

  function save() {
    if (st.saving || st.item === null || st.pos === null) { return; }
    var d = st.draft, body = {
      item: st.item, revise: st.revising, elapsed_ms: Date.now() - st.shownAt,
      agreement: d.agreement === undefined ? null : d.agreement,
      realism: d.realism || null, confidence: d.confidence === undefined ? null : d.confidence,
      comment: $("comment") ? $("comment").value : null, quality_unacceptable: !!d.quality_unacceptable
    };
    st.saving = true; status("Saving…");
    api("POST", "/api/answer", body).then(function (r) {
      st.answered = r.answered; status("Saved.");
      return load(r.next);
    }).catch(function (e) {
      status(e.message, true);
      if (e.status === 409) { return api("GET", "/api/state").then(function (s) { return load(s.current); }); }
    }).then(function () { st.saving = false; }, function () { st.saving = false; });
  }

  document.querySelectorAll(".choice").forEach(function (b) {
    b.addEventListener("click", function () { choose(b.dataset.field, b.dataset.value); });
  });
  if ($("quality")) {
    $("quality").addEventListener("change", function () { st.draft.quality_unacceptable = $("quality").checked; });
  }
  $("save").addEventListener("click", save);
  $("back").addEventListener("click", function () { if (st.pos > 0) { load(st.pos - 1); } });
  $("forward").addEventListener("click", function () { if (st.pos < st.answered) { load(st.pos + 1); } });
  $("btn-invert").addEventListener("click", function () { viewer.invert(); });
  $("btn-reset").addEventListener("click", function () { viewer.reset(); });

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT")) {
      if (e.key === "Escape") { t.blur(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var k = e.key.toLowerCase(), handled = true;
    if (tasks.indexOf("agreement") >= 0 && k >= "1" && k <= "5") { choose("agreement", Number(k) - 3); }
    else if (tasks.indexOf("realism") >= 0 && k === "r") { choose("realism", "real"); }
    else if (tasks.indexOf("realism") >= 0 && k === "s") { choose("realism", "synthetic"); }
    else if (tasks.indexOf("realism") >= 0 && k >= "7" && k <= "9") { choose("confidence", Number(k) - 6); }
    else if (k === "q") { st.draft.quality_unacceptable = !st.draft.quality_unacceptable; paint(); }
    else if (k === "enter") { save(); }
    else if (k === "i") { viewer.invert(); }
    else if (k === "0") { viewer.reset(); }
    else if (k === "+" || k === "=") { viewer.zoomBy(1.25); }
    else if (k === "-") { viewer.zoomBy(1 / 1.25); }
    else if (k === "arrowleft") { $("back").click(); }
    else if (k === "arrowright") { $("forward").click(); }
    else if (k === "p") { window.location.href = "/pause"; }
    else if (k === "c" && $("comment")) { $("comment").focus(); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });

  api("GET", "/api/state").then(function (s) {
    st.total = s.total; st.answered = s.answered;
    return load(s.current);
  }).catch(function (e) { status(e.message, true); });
})();
