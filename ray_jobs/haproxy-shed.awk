# Rules that ray_jobs/haproxy-loopback adds to each app backend of the HAProxy config Ray writes:
# overload refused in HAProxy, in C, before the ingress's Python sees it.
#
# The app's ingress states, on each prediction's answer, its budget (header x-sentiment-budget:
# the windows it admits in flight) and, when it requires a key, the key's sha256 (x-sentiment-key).
# HAProxy remembers both per backend and removes the headers. A POST that carries the key (bearer,
# or basic auth with the key as user), or any POST when the app requires none, is counted while
# in flight; one that would make more than the budget times the usable ingress replicas gets the
# ingress's 503 with `Retry-After: 1`. A request holds at least one window, so nothing the ingress
# would admit is refused here. Requests without the key are never counted or refused here: the
# ingress answers them 401 from their headers, and a flood of them cannot crowd out keyed ones.
# Until a first prediction is answered (and after each reload) nothing is refused here.
/^backend / && $2 != "default_backend" && $2 !~ /-via-ingress-request-router$/ {
  print
  id = $2; gsub(/[^A-Za-z0-9_]/, "_", id)
  budget = "proc.sentiment_budget_" id; key = "proc.sentiment_key_" id
  print "    stick-table type integer size 1 store conn_cur"
  print "    http-response set-var(" budget ") res.hdr(x-sentiment-budget) if { res.hdr(x-sentiment-budget) -m int ge 1 }"
  print "    http-response set-var(" key ") res.hdr(x-sentiment-key) if { res.hdr(x-sentiment-key) -m found }"
  print "    http-response del-header x-sentiment-budget"
  print "    http-response del-header x-sentiment-key"
  print "    http-request set-var(txn.sentiment_cap) nbsrv,mul(" budget ") if METH_POST { var(" budget ") -m found }"
  print "    http-request set-var(txn.sentiment_key) req.hdr(authorization),word(2,' '),sha2(256),hex,lower if { var(txn.sentiment_cap) -m found } { req.hdr(authorization),word(1,' ') -m str -i bearer }"
  print "    http-request set-var(txn.sentiment_key) req.hdr(authorization),word(2,' '),b64dec,field(1,:),sha2(256),hex,lower if { var(txn.sentiment_cap) -m found } { req.hdr(authorization),word(1,' ') -m str -i basic }"
  print "    http-request track-sc0 int(1) if { var(txn.sentiment_cap) -m found } !{ var(" key ") -m found }"
  print "    http-request track-sc0 int(1) if { var(txn.sentiment_cap) -m found } { var(txn.sentiment_key),strcmp(" key ") eq 0 }"
  print "    http-request return status 503 content-type application/json string \"{\\\"detail\\\": \\\"overloaded: more requests in flight than the ingress admits; retry shortly\\\"}\" hdr Retry-After 1 if { sc0_conn_cur,sub(txn.sentiment_cap) gt 0 }"
  next
}
{ print }
