// An endpoint's deployment charts: requests per second by status code, latency
// percentiles, and replicas (with requests in flight or waiting), from the traffic.json of
// the deployment, as the router counted them. Redrawn every 2 s while the page is shown.
(function () {
  "use strict";
  var boxes = document.querySelectorAll("[data-traffic-url]");
  if (!boxes.length || !window.Plotly) return;
  var layout = function (title) {
    return {
      title: { text: title, font: { size: 13 } },
      margin: { l: 40, r: 10, t: 30, b: 30 },
      height: 220,
      xaxis: { type: "date" },
      legend: { orientation: "h" },
    };
  };
  var config = { displayModeBar: false, responsive: true };

  function draw(box, data) {
    var t = data.times;
    var codes = Object.keys(data.codes).map(function (code) {
      return { x: t, y: data.codes[code], name: code, type: "bar" };
    });
    var latency = Object.keys(data.latency).map(function (name) {
      return { x: t, y: data.latency[name], name: name + " (ms)", mode: "lines" };
    });
    var replicas = [
      { x: t, y: data.replicas, name: "replicas", mode: "lines", line: { shape: "hv" } },
      { x: t, y: data.busy, name: "in flight or waiting", mode: "lines" },
    ];
    var empty = !t.length;
    box.querySelector("[data-empty]").hidden = !empty;
    var charts = box.querySelectorAll("[data-chart]");
    charts.forEach(function (c) { c.hidden = empty; });
    if (empty) return;
    window.Plotly.react(charts[0], codes, Object.assign(layout("Requests by status"), { barmode: "stack" }), config);
    window.Plotly.react(charts[1], latency, layout("Latency"), config);
    window.Plotly.react(charts[2], replicas, layout("Replicas"), config);
  }

  function load() {
    if (document.hidden) return;
    boxes.forEach(function (box) {
      fetch(box.dataset.trafficUrl, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) draw(box, data); })
        .catch(function () {});
    });
  }
  load();
  window.setInterval(load, 2000);
})();
