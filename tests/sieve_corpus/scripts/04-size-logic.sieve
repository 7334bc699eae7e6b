require "fileinto";
if size :over 8K { fileinto "Archive"; }
elsif size :under 3000 { fileinto "Misc"; }
if allof (size :over 1000, not exists "List-Id", anyof (false, header :contains "from" "e")) {
    fileinto "Family";
}
if anyof (true, size :over 1G) { keep; }
if allof (true, false) { discard; }
