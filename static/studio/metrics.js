// A job's Metrics section: one Plotly line chart per metric (by step), and the run's
// params and tags, from the job's metrics.json. While the job runs, the run's socket says
// when points arrive and the charts reload (at most once a second); until the socket is
// open (the run starts with the job) they reload every 5 s.
(function () {
  "use strict";
  var section = document.getElementById("metrics");
  if (!section) return;
  var url = section.dataset.metricsUrl;
  var charts = document.getElementById("metric-charts");
  var params = document.getElementById("run-params");
  var state = document.getElementById("metrics-state");
  var socketUrl = section.dataset.metricsSocket;
  var drawn = {};
  var socket = null;
  var pending = null;
  var finished = false;

  function schedule(delay) {
    if (pending !== null || finished) return;
    pending = window.setTimeout(function () { pending = null; load(); }, delay);
  }

  function connect() {
    if (!socketUrl || !window.WebSocket || socket) return;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new window.WebSocket(scheme + window.location.host + socketUrl);
    socket.onmessage = function () { schedule(1000); };
    socket.onclose = function () { socket = null; schedule(5000); };
  }

  function chartFor(key) {
    if (drawn[key]) return drawn[key];
    var box = document.createElement("figure");
    box.className = "chart";
    var plot = document.createElement("div");
    plot.setAttribute("role", "img");
    plot.setAttribute("aria-label", "Chart of metric " + key + " by step");
    var caption = document.createElement("figcaption");
    caption.textContent = key;
    box.appendChild(caption);
    box.appendChild(plot);
    charts.appendChild(box);
    drawn[key] = plot;
    return plot;
  }

  function table(title, values) {
    var keys = Object.keys(values).sort();
    if (!keys.length) return "";
    var rows = keys.map(function (k) {
      var cell = function (text) {
        var td = document.createElement("td");
        td.textContent = text;
        return td.outerHTML;
      };
      return "<tr>" + cell(k) + cell(values[k]) + "</tr>";
    }).join("");
    return "<h3>" + title + "</h3><table><thead><tr><th scope=\"col\">Name</th>" +
      "<th scope=\"col\">Value</th></tr></thead><tbody>" + rows + "</tbody></table>";
  }

  function draw(data) {
    var keys = Object.keys(data.metrics);
    state.textContent = keys.length ? "" : (data.run_id ? "The run has logged no metrics yet." :
      "The job has not started its run yet.");
    keys.forEach(function (key) {
      var series = data.metrics[key];
      var trace = {x: series.steps, y: series.values, mode: "lines+markers", name: key,
                   line: {color: "#2f5bd3"}};
      var layout = {margin: {t: 10, r: 10, b: 40, l: 50}, height: 260,
                    xaxis: {title: {text: "step"}}, yaxis: {title: {text: key}}};
      window.Plotly.react(chartFor(key), [trace], layout, {displaylogo: false, responsive: true});
    });
    params.innerHTML = table("Params", data.params) + table("Tags", data.tags);
    return data.status;
  }

  function load() {
    fetch(url, {credentials: "same-origin"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        var status = draw(data);
        finished = section.dataset.running !== "true" || status === "FINISHED" ||
          status === "FAILED" || status === "KILLED";
        if (finished) {
          if (socket) socket.close();
          return;
        }
        if (data.run_id) connect(); else schedule(5000);
      })
      .catch(function () { state.textContent = "The metrics could not be loaded."; });
  }

  if (window.Plotly) load(); else window.addEventListener("load", load);
})();
