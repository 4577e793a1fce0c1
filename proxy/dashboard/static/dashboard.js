// The only script of the dashboard: a copy button beside a new key or link.
// Without it the text is still shown, selectable, in a read-only field.
document.querySelectorAll("button.copy[data-copy]").forEach((button) => {
  const field = document.getElementById(button.dataset.copy);
  if (!field || !navigator.clipboard) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(field.value);
      button.textContent = button.dataset.copied || "Copied";
    } catch {
      field.select();
      button.textContent = button.dataset.fallback || "Press Ctrl+C";
    }
  });
});
