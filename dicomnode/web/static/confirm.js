// Forms with data-confirm ask before they are sent (no inline handlers: the pages' CSP
// allows scripts from this origin only).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
