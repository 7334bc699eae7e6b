require ["fileinto", "comparator-i;ascii-numeric"];
if header :is :comparator "i;octet" "to" "alice martin <alice@example.org>" { fileinto "Junk"; }
if header :is :comparator "i;ascii-casemap" "to" "alice martin <alice@example.org>" { fileinto "Family"; }
if header :contains :comparator "i;octet" "subject" "Order" { fileinto "Shop"; }
if header :is :comparator "i;ascii-numeric" "x-priority" "3" { fileinto "Work"; }
if header :matches :comparator "i;ascii-casemap" "subject" "*ICTURES FROM THE ?AKE" { fileinto "Misc"; }
if header :contains "subject" "GRÜSSE" { fileinto "Archive"; }
