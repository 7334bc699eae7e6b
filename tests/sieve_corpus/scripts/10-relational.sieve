require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ge" :comparator "i;ascii-numeric" "received" "2" { fileinto "Archive"; }
if address :count "gt" :comparator "i;ascii-numeric" ["to", "cc"] "1" { fileinto "Family"; }
if header :value "lt" :comparator "i;ascii-numeric" "x-spam-score" "5" { fileinto "Misc"; }
if header :value "ge" :comparator "i;ascii-casemap" "subject" "r" { fileinto "Work"; }
if header :count "eq" :comparator "i;ascii-numeric" "references" "0" { keep; }
if header :value "ne" "precedence" "bulk" { fileinto "Shop"; }
