require ["envelope", "fileinto"];
if envelope :domain :is "from" "gartenfreunde.example.org" { fileinto "Lists"; }
if envelope :all :is "to" "alice@example.org" { keep; }
if envelope :localpart :matches "from" "news*" { fileinto "Archive"; }
if envelope :is "from" "" { fileinto "Junk"; }
