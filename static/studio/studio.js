// Live parts of the studio: a job's or a deployment's log over its websocket, and job status changes
// from the workspace socket, which ask htmx to refresh the affected rows and panels.
(function () {
  "use strict";

  function socketUrl(path) {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + path;
  }

  function backoff(attempt) {
    return Math.min(5000, 250 * Math.pow(2, attempt));
  }

  // -- a job's log: backlog, live tail, resume after ?after=<last seq> on reconnect --------
  // At most data-max-lines lines stay on the page (the oldest go first); the whole log
  // is a download away.
  function followLog(pre) {
    var last = 0, attempt = 0, ended = false, trimmed = 0;
    var maxLines = parseInt(pre.dataset.maxLines || "5000", 10);
    var state = document.getElementById("log-state");
    var search = document.getElementById("log-search");
    var stamps = document.getElementById("log-timestamps");
    var note = null;
    function say(text) { if (state) state.textContent = text; }
    function matches(text) {
      var wanted = search && search.value.trim().toLowerCase();
      return !wanted || text.toLowerCase().indexOf(wanted) !== -1;
    }
    function trim() {
      var rows = pre.querySelectorAll("span.line");
      for (var i = 0; i < rows.length - maxLines; i++) { rows[i].remove(); trimmed++; }
      if (trimmed) {
        if (!note) {
          note = document.createElement("span");
          note.className = "trimmed";
          pre.insertBefore(note, pre.firstChild);
        }
        note.textContent = "… " + trimmed + " earlier lines are not shown here (download the whole log).\n";
      }
    }
    // Lines are drawn once a frame, in one batch: a page that measured and scrolled
    // after every line fell minutes behind a chatty job.
    var pending = [], scheduled = false;
    function row(msg) {
      var line = document.createElement("span");
      line.className = "line " + msg.stream;
      line.dataset.seq = msg.seq;
      var ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = (msg.ts || "").replace("T", " ").slice(0, 23) + "  ";
      var text = document.createElement("span");
      text.className = "text";
      text.textContent = msg.line + "\n";
      line.appendChild(ts);
      if (msg.instance) {  // a deployment's line: which instance and container wrote it
        var source = document.createElement("span");
        source.className = "source";
        source.textContent = "[" + msg.instance + " " + msg.container + "] ";
        line.appendChild(source);
      }
      line.appendChild(text);
      if (!matches(msg.line)) line.classList.add("hidden");
      return line;
    }
    function flush() {
      scheduled = false;
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var batch = pending.slice(-maxLines);  // more than fit would be trimmed at once
      trimmed += pending.length - batch.length;
      pending = [];
      var fragment = document.createDocumentFragment();
      batch.forEach(function (msg) { fragment.appendChild(row(msg)); });
      pre.appendChild(fragment);
      trim();
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      if (ended) say("The job ended: " + pre.dataset.ended + ".");
    }
    function connect() {
      var ws = new WebSocket(socketUrl(pre.dataset.logSocket + "?after=" + last));
      ws.onopen = function () { attempt = 0; say("Live."); };
      ws.onmessage = function (event) {
        var msg = JSON.parse(event.data);
        if (msg.type === "end") {
          ended = true;
          pre.dataset.ended = msg.status;
          if (!scheduled) say("The job ended: " + msg.status + ".");  // else once drawn
          return;
        }
        if (msg.seq <= last) return;
        last = msg.seq;
        pending.push(msg);
        if (pending.length > 2 * maxLines) {  // a hidden tab draws no frames: stay bounded
          trimmed += pending.length - maxLines;
          pending = pending.slice(-maxLines);
        }
        if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
      };
      ws.onclose = function () {
        if (ended) return;
        say("Reconnecting…");
        setTimeout(connect, backoff(attempt++));
      };
    }
    if (search) {
      search.addEventListener("input", function () {
        pre.querySelectorAll("span.line").forEach(function (row) {
          row.classList.toggle("hidden", !matches(row.lastChild.textContent));
        });
      });
    }
    if (stamps) {
      stamps.addEventListener("change", function () {
        pre.classList.toggle("with-ts", stamps.checked);
      });
    }
    connect();
  }

  // -- status changes in the workspace ------------------------------------------------------
  // htmx drops a request on an element that has one in flight: a change that arrives
  // during a refresh (Finalizing, then Completed a moment later) would never be shown.
  // Nor would one that arrives while the whole table is being fetched (as it is when the
  // socket opens): the row would show it, then the table rendered before it would
  // replace the row. Either way it is remembered and asked for once the refresh settles.
  var stale = {};
  function refresh(el, name) {
    if (el.closest(".htmx-request")) { stale[name] = true; return; }
    htmx.trigger(el, "job-changed");
  }
  document.addEventListener("htmx:afterSettle", function () {
    Object.keys(stale).forEach(function (name) {
      var busy = false;
      var targets = document.querySelectorAll('[data-job="' + CSS.escape(name) + '"]');
      targets.forEach(function (el) { busy = busy || !!el.closest(".htmx-request"); });
      if (busy) return;
      delete stale[name];
      targets.forEach(function (el) { htmx.trigger(el, "job-changed"); });
    });
  });

  function followWorkspace(path) {
    var attempt = 0;
    function connect() {
      var ws = new WebSocket(socketUrl(path));
      ws.onopen = function () {
        attempt = 0;
        document.body.dataset.workspaceLive = "true";  // status changes arrive from now on
        // Changes made before the socket opened were not heard: refresh once.
        if (window.htmx) {
          document.querySelectorAll("[data-job]:not(tr)").forEach(function (el) {
            htmx.trigger(el, "job-changed");
          });
          document.querySelectorAll("[data-job-table]").forEach(function (el) {
            htmx.trigger(el, "jobs-changed");
          });
        }
      };
      ws.onmessage = function (event) {
        var msg = JSON.parse(event.data);
        if (msg.type !== "status" || !window.htmx) return;
        var targets = document.querySelectorAll('[data-job="' + CSS.escape(msg.name) + '"]');
        if (targets.length) {
          targets.forEach(function (el) { refresh(el, msg.name); });
        } else {
          document.querySelectorAll("[data-job-table]").forEach(function (el) {
            htmx.trigger(el, "jobs-changed");
          });
        }
      };
      ws.onclose = function () {
        delete document.body.dataset.workspaceLive;
        setTimeout(connect, backoff(attempt++));
      };
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-log-socket]").forEach(followLog);
    var path = document.body.dataset.workspaceSocket;
    if (path) followWorkspace(path);
  });
})();

// Jobs picked for comparison stay picked while the job list refreshes itself.
(function () {
  "use strict";
  var picked = new Set();
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches('input[name="jobs"][form="compare-form"]')) {
      if (box.checked) picked.add(box.value); else picked.delete(box.value);
    }
  });
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll('input[name="jobs"][form="compare-form"]').forEach(function (box) {
      box.checked = picked.has(box.value);
    });
  });
  // Jobs picked on other pages of the list go too.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "compare-form") return;
    var shown = new Set();
    document.querySelectorAll('input[name="jobs"][form="compare-form"]').forEach(function (box) {
      shown.add(box.value);
    });
    picked.forEach(function (name) {
      if (shown.has(name)) return;
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "jobs";
      hidden.value = name;
      form.appendChild(hidden);
    });
  });
})();
