// The compare view: one line per job for the chosen metric, from the page's own data.
(function () {
  "use strict";
  function draw() {
    var series = JSON.parse(document.getElementById("compare-data").textContent);
    var traces = series.map(function (s) {
      return {x: s.steps, y: s.values, mode: "lines", name: s.name};
    });
    window.Plotly.newPlot("compare-chart", traces,
      {margin: {t: 10, r: 10, b: 40, l: 50}, height: 420, xaxis: {title: {text: "step"}},
       legend: {orientation: "h"}}, {displaylogo: false, responsive: true});
  }
  if (window.Plotly) draw(); else window.addEventListener("load", draw);
})();
