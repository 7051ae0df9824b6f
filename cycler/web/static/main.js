// Starts the page the server named in the boot data.
"use strict";

const PAGES = {
  lab: labPage,
  run: runPage,
  history: historyPage,
  submit: submitPage,
  login: loginPage,
  notfound: notFoundPage,
};

document.documentElement.classList.toggle("large", largeWanted());
renderHeader();
document.body.dataset.page = BOOT.page || "notfound";
(PAGES[BOOT.page] || notFoundPage)(document.getElementById("main"));
// The lab, run and history pages use the live data; the others show the header's live indicator too.
if (!["lab", "run", "history"].includes(BOOT.page)) connectLive(() => {});
