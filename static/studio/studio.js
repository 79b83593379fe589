// Live parts of the studio: a job's log over its websocket, and job status changes
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
  function followLog(pre) {
    var last = 0, attempt = 0, ended = false;
    var state = document.getElementById("log-state");
    function say(text) { if (state) state.textContent = text; }
    function connect() {
      var ws = new WebSocket(socketUrl(pre.dataset.logSocket + "?after=" + last));
      ws.onopen = function () { attempt = 0; say("Live."); };
      ws.onmessage = function (event) {
        var msg = JSON.parse(event.data);
        if (msg.type === "end") {
          ended = true;
          say("The job ended: " + msg.status + ".");
          pre.dataset.ended = msg.status;
          return;
        }
        if (msg.seq <= last) return;
        last = msg.seq;
        var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        var row = document.createElement("span");
        row.className = "line " + msg.stream;
        row.dataset.seq = msg.seq;
        row.textContent = msg.line + "\n";
        pre.appendChild(row);
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      };
      ws.onclose = function () {
        if (ended) return;
        say("Reconnecting…");
        setTimeout(connect, backoff(attempt++));
      };
    }
    connect();
  }

  // -- status changes in the workspace ------------------------------------------------------
  function followWorkspace(path) {
    var attempt = 0;
    function connect() {
      var ws = new WebSocket(socketUrl(path));
      ws.onopen = function () {
        attempt = 0;
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
          targets.forEach(function (el) { htmx.trigger(el, "job-changed"); });
        } else {
          document.querySelectorAll("[data-job-table]").forEach(function (el) {
            htmx.trigger(el, "jobs-changed");
          });
        }
      };
      ws.onclose = function () { setTimeout(connect, backoff(attempt++)); };
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-log-socket]").forEach(followLog);
    var path = document.body.dataset.workspaceSocket;
    if (path) followWorkspace(path);
  });
})();
