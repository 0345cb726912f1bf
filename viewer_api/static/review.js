// The review panel of one study (/review?study=<uid>): the AI findings as reviewed, the
// actions of /api/v1/studies/{study}/review, and signing. Every action sends the version this
// page last saw; a 409 means someone else acted in between, and the page says so and reloads.
"use strict";

(() => {
  const { api, el, millimetres, percent } = Pacs;
  const study = new URLSearchParams(window.location.search).get("study") || "";
  const base = `/api/v1/studies/${encodeURIComponent(study)}/review`;
  let current = null; // the review as last loaded
  let slices = null; // SOPInstanceUID by position, for the links into OHIF

  const number = (value) => (Number.isFinite(value) ? value.toFixed(1) : "?");

  // The image of the analysed series nearest to a centre (along the slice normal), from the
  // series metadata (ImagePositionPatient, ImageOrientationPatient).
  async function loadSlices(series) {
    const url = `/dicom-web/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/metadata`;
    const instances = await api(url, { headers: { Accept: "application/dicom+json" } });
    return instances
      .map((ds) => ({
        uid: ds["00080018"]?.Value?.[0],
        position: ds["00200032"]?.Value,
        orientation: ds["00200037"]?.Value,
      }))
      .filter((s) => s.uid && s.position?.length === 3 && s.orientation?.length === 6);
  }

  function nearestSlice(centre) {
    let best = null;
    for (const s of slices || []) {
      const [r1, r2, r3, c1, c2, c3] = s.orientation.map(Number);
      const normal = [r2 * c3 - r3 * c2, r3 * c1 - r1 * c3, r1 * c2 - r2 * c1];
      const offset = [centre.x, centre.y, centre.z].map((v, i) => v - Number(s.position[i]));
      const distance = Math.abs(offset.reduce((sum, v, i) => sum + v * normal[i], 0));
      if (!best || distance < best.distance) best = { uid: s.uid, distance };
    }
    return best;
  }

  function viewerLink(finding) {
    const slice = nearestSlice(finding.centre);
    if (!slice || !current.SeriesInstanceUID) {
      return el("a", { href: Pacs.viewerUrl(study), target: "_blank", rel: "noopener noreferrer",
        className: "open-finding" }, "Open the study in OHIF");
    }
    const at = {
      initialSeriesInstanceUID: current.SeriesInstanceUID,
      initialSOPInstanceUID: slice.uid,
    };
    return el("a", { href: Pacs.viewerUrl(study, at), target: "_blank", rel: "noopener noreferrer",
      className: "open-finding" }, "Show in OHIF");
  }

  async function act(path, body) {
    try {
      const review = await api(`${base}${path}`, {
        method: "POST",
        json: { ...body, version: current.version },
      });
      render(review);
      Pacs.show(`Saved (version ${review.version}).`, "ok");
    } catch (error) {
      if (error.status === 409) {
        await load();
        Pacs.show(
          `Not saved: ${error.message}. The review as it is now has been loaded ` +
          `(version ${current.version}); check it and act again.`, "error");
      } else {
        Pacs.show(`Not saved: ${error.message}`, "error");
      }
    }
  }

  function correctionForm(f) {
    const field = (name, value) =>
      el("label", {}, name, el("input", { name, type: "number", step: "any", value: String(value) }));
    const form = el("form", { className: "inline correct-form", hidden: true },
      field("diameter_mm", f.diameter_mm.toFixed(1)), field("x", f.centre.x.toFixed(1)),
      field("y", f.centre.y.toFixed(1)), field("z", f.centre.z.toFixed(1)), el("button", { type: "submit" }, "Save correction"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const v = (name) => Number(form.elements[name].value);
      act(`/findings/${encodeURIComponent(f.tracking_uid)}/correct`, {
        diameter_mm: v("diameter_mm"),
        centre: { x: v("x"), y: v("y"), z: v("z") },
      });
    });
    return form;
  }

  function findingCard(f, index) {
    const path = `/findings/${encodeURIComponent(f.tracking_uid)}`;
    const reason = el("input", { className: "reason", placeholder: "reason (optional)",
      value: f.reason || "" });
    const correction = correctionForm(f);
    const source = f.origin === "ai" ? `AI, certainty ${percent(f.probability)}` : "added by a radiologist";
    return el(
      "div",
      { className: `finding ${f.decision}`, dataset: { trackingUid: f.tracking_uid, decision: f.decision } },
      el("strong", {}, `Nodule ${index + 1}`), ` (${source}) · `,
      el("span", { className: "decision" }, f.decision), f.reason ? ` (${f.reason})` : "",
      el("div", {}, `diameter ${millimetres(f.diameter_mm)} · centre (${number(f.centre.x)}, `,
        `${number(f.centre.y)}, ${number(f.centre.z)}) · `, viewerLink(f)),
      el("div", { className: "actions" },
        el("button", { type: "button", className: "confirm",
          onclick: () => act(`${path}/confirm`, {}) }, "Confirm"),
        reason,
        el("button", { type: "button", className: "reject",
          onclick: () => act(`${path}/reject`, { reason: reason.value.trim() || null }) }, "Reject"),
        el("button", { type: "button", className: "correct",
          onclick: () => { correction.hidden = !correction.hidden; } }, "Correct…")),
      correction,
    );
  }

  function render(review) {
    current = review;
    document.getElementById("status").textContent = review.status.replace(/_/g, " ") +
      (review.amending ? " (amending)" : "");
    document.getElementById("version").textContent = String(review.version);
    const signed = review.signed;
    document.getElementById("signed").textContent = signed
      ? ` · revision ${signed.revision} signed by ${signed.signed_by} on ` +
        new Date(signed.signed_at).toLocaleString()
      : "";
    document.getElementById("findings").replaceChildren(
      ...(review.findings.length
        ? review.findings.map(findingCard)
        : [el("p", { className: "muted" }, review.SeriesInstanceUID === null
          ? "The AI has not analysed this study: nothing to review yet."
          : "The AI reported no nodule.")]),
    );
    const impression = document.querySelector("#impression textarea");
    if (document.activeElement !== impression) impression.value = review.impression;
    const lungRads = review.lung_rads;
    document.getElementById("suggestion").textContent = lungRads.suggestion.category;
    document.getElementById("suggestion-rule").textContent = `(${lungRads.suggestion.rule})`;
    document.getElementById("caveat").textContent = lungRads.suggestion.caveat;
    const category = lungRads.category || "";
    const form = document.getElementById("lung-rads");
    form.elements.category.value = category.replace(/S$/, "");
    form.elements.s.checked = category.endsWith("S");
    const sign = document.getElementById("sign");
    sign.disabled = review.status === "final" || review.pending.length > 0 ||
      review.SeriesInstanceUID === null;
    document.getElementById("sign-state").textContent =
      review.status === "final" ? "Signed; any change starts an amendment."
        : review.pending.length ? `${review.pending.length} finding(s) still pending.`
          : `Reports ${review.findings.filter((f) => f.decision === "confirmed").length} ` +
            `nodule(s), Lung-RADS ${lungRads.reported}.`;
    document.querySelector("#history tbody").replaceChildren(
      ...review.history.map((a) => el("tr", {},
        el("td", {}, String(a.version)), el("td", {}, new Date(a.at).toLocaleString()),
        el("td", {}, a.actor), el("td", {}, a.action.replace(/_/g, " ")),
        el("td", {}, Object.keys(a.detail).length ? JSON.stringify(a.detail) : ""))),
    );
  }

  async function load() {
    const review = await api(base);
    if (review.SeriesInstanceUID && slices === null) {
      try {
        slices = await loadSlices(review.SeriesInstanceUID);
      } catch {
        slices = []; // the links open the study without a slice
      }
    }
    render(review);
  }

  async function describeStudy() {
    const query = new URLSearchParams({ StudyInstanceUID: study, includefield: "StudyDescription" });
    const [match] = await api(`/dicom-web/studies?${query}`, {
      headers: { Accept: "application/dicom+json" },
    });
    if (!match) return;
    const text = (tag) => match[tag]?.Value?.[0];
    document.getElementById("patient").textContent =
      `${Pacs.personName(text("00100010"))} · ${text("00100020") || "no patient ID"}`;
    document.getElementById("study-details").textContent =
      `${Pacs.date(text("00080020"))} · ${text("00081030") || "no description"} · `;
  }

  function wireForms() {
    document.getElementById("add").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const v = (name) => Number(form.elements[name].value);
      act("/findings", { centre: { x: v("x"), y: v("y"), z: v("z") }, diameter_mm: v("diameter_mm") });
    });
    document.getElementById("impression").addEventListener("submit", (event) => {
      event.preventDefault();
      act("/impression", { text: event.target.elements.text.value });
    });
    document.getElementById("lung-rads").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const category = form.elements.category.value;
      act("/lung-rads", { category: category ? category + (form.elements.s.checked ? "S" : "") : null });
    });
    document.getElementById("sign").addEventListener("click", () => act("/sign", {}));
  }

  Pacs.session(async () => {
    document.getElementById("content").hidden = false;
    document.getElementById("open-viewer").href = Pacs.viewerUrl(study);
    wireForms();
    try {
      await Promise.all([load(), describeStudy()]);
    } catch (error) {
      Pacs.show(`The review could not be loaded: ${error.message}`, "error");
    }
  });
})();
