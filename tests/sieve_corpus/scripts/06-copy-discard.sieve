require ["fileinto", "copy"];
if header :contains "precedence" "bulk" { fileinto :copy "Archive"; }
if header :matches "subject" "*Fwd*" { fileinto :copy "Misc"; discard; }
if address :domain :is "from" "neko-zakka.example.net" { discard; stop; }
if header :contains "subject" "order" { fileinto :copy "Shop"; }
