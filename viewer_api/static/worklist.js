// The worklist page: GET /api/v1/worklist, one row per study (AI-flagged first, the server's
// order), each opening the study in OHIF and in the review panel.
"use strict";

(() => {
  const { api, date, el, millimetres, percent, personName } = Pacs;
  const PAGE = 50;
  let offset = 0;

  function label(value) {
    return value ? String(value).replace(/_/g, " ") : "—";
  }

  function row(item) {
    const uid = item.StudyInstanceUID;
    const flagged = Boolean(item.flagged);
    return el(
      "tr",
      { className: flagged ? "flagged" : "", dataset: { study: uid, flagged: String(flagged) } },
      el("td", { className: "flag" }, flagged ? "⚑ flagged" : ""),
      el("td", {}, personName(item.PatientName)),
      el("td", {}, item.PatientID || "—"),
      el("td", {}, date(item.StudyDate)),
      el("td", { className: "number" }, item.nodules ?? "—"),
      el("td", { className: "number" }, millimetres(item.largest_diameter_mm)),
      el("td", { className: "number" }, percent(item.highest_probability)),
      el("td", { title: item.ai_reason || "" }, label(item.ai_status)),
      el("td", {}, label(item.review_status)),
      el(
        "td", {},
        el("a", { href: Pacs.viewerUrl(uid), target: "_blank", rel: "noopener noreferrer",
          className: "open-viewer" }, "OHIF"),
        " · ",
        el("a", { href: Pacs.reviewUrl(uid), className: "open-review" }, "Review"),
      ),
    );
  }

  function query() {
    const params = new URLSearchParams({ limit: PAGE, offset });
    for (const [name, value] of new FormData(document.getElementById("filters"))) {
      if (String(value).trim()) params.set(name, String(value).trim());
    }
    return params;
  }

  async function load() {
    Pacs.show("Loading…");
    try {
      const page = await api(`/api/v1/worklist?${query()}`);
      const body = document.querySelector("#worklist tbody");
      body.replaceChildren(...page.items.map(row));
      const last = offset + page.items.length;
      document.getElementById("range").textContent =
        page.total ? `${offset + 1}–${last} of ${page.total}` : "no studies";
      document.getElementById("previous").disabled = offset === 0;
      document.getElementById("next").disabled = last >= page.total;
      Pacs.show("");
    } catch (error) {
      Pacs.show(`The worklist could not be loaded: ${error.message}`, "error");
    }
  }

  Pacs.session(() => {
    document.getElementById("content").hidden = false;
    document.getElementById("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      offset = 0;
      load();
    });
    document.getElementById("previous").addEventListener("click", () => {
      offset = Math.max(0, offset - PAGE);
      load();
    });
    document.getElementById("next").addEventListener("click", () => {
      offset += PAGE;
      load();
    });
    load();
  });
})();
