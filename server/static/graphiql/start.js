// Starts GraphiQL on the head-end's /graphql page. A static file (not an inline script) so the
// page's Content-Security-Policy can be script-src 'self'. Queries and mutations go to this page's
// URL over HTTP; subscriptions over graphql-transport-ws on the same URL (GraphiQL's bundle carries
// the graphql-ws client). A bearer token goes in the Headers tab: {"Authorization": "Bearer ..."}.
(function () {
  "use strict";

  var url = window.location.href.split(/[?#]/)[0];

  function webSocketUrl(httpUrl) {
    var parsed = new URL(httpUrl);
    parsed.protocol = parsed.protocol === "https:" ? "wss:" : "ws:";
    parsed.hash = "";
    return parsed.toString();
  }

  var fetcher = GraphiQL.createFetcher({
    url: url,
    subscriptionUrl: webSocketUrl(url),
  });

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    }),
  );
})();
