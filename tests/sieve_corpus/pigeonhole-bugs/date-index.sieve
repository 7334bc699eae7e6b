# Pigeonhole 0.5 bug: the date test ignores :index / :last (RFC 5260 §6 says the test applies
# to the Nth occurrence of the field) and always reads the first field. With two Received
# fields, the second dated +0100, this must file into Misc; Pigeonhole does not.
require ["date", "index", "fileinto"];
if date :index 2 :is :originalzone "received" "zone" "+0100" { fileinto "Misc"; }
