// Invite links carry the token after '#', which browsers never send to a server
// (so it stays out of logs): read it here, clear it from the address bar, submit.
(function () {
  "use strict";
  var m = /(?:^#|&)t=([^&]+)/.exec(window.location.hash);
  if (!m) { return; }
  history.replaceState(null, "", window.location.pathname);
  if (document.getElementById("message")) { return; }  // a failed try: do not loop
  document.getElementById("token").value = decodeURIComponent(m[1]);
  document.getElementById("login-form").submit();
})();
