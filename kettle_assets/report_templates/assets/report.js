// The CI report's only script: draw the embedded plotly figures, and sort tables by a click
// on a column header (numbers as numbers; a cell's data-sort overrides its text).
(function () {
  "use strict";
  document.querySelectorAll("script[data-plot]").forEach(function (spec) {
    var figure = JSON.parse(spec.textContent);
    var layout = Object.assign({ autosize: true, paper_bgcolor: "#fff", plot_bgcolor: "#fff" }, figure.layout);
    window.Plotly.newPlot(document.getElementById(spec.dataset.plot), figure.data, layout,
      { displayModeBar: false, responsive: true });
  });

  function key(cell) {
    var raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    var number = parseFloat(raw.replace(/%$/, ""));
    return isNaN(number) || !/^[-+]?[\d.]/.test(raw) ? { text: raw.toLowerCase() } : { number: number };
  }

  function compare(a, b) {
    if (a.number !== undefined && b.number !== undefined) return a.number - b.number;
    if (a.number !== undefined) return -1;
    if (b.number !== undefined) return 1;
    return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      th.addEventListener("click", function () {
        var descending = !th.classList.contains("desc");
        headers.forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(descending ? "desc" : "asc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return r.cells.length > column; });
        rows.sort(function (a, b) {
          var order = compare(key(a.cells[column]), key(b.cells[column]));
          return descending ? -order : order;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
