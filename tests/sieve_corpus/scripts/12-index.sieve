require ["date", "index", "fileinto"];
if header :index 1 :contains "received" "mx1.example.org" { fileinto "Work"; }
if header :index 1 :last :contains "received" "smtp." { fileinto "Archive"; }
if address :index 1 :domain :is "from" "example.org" { fileinto "Family"; }
if date :is :originalzone "received" "zone" "+0000" { fileinto "Misc"; }
if header :index 3 :matches "received" "*" { fileinto "Junk"; }
