require ["duplicate", "fileinto", "variables"];
if duplicate { fileinto "Dup"; stop; }
if duplicate :header "list-id" :handle "lists" :seconds 3600 { fileinto "Dup"; }
if duplicate :uniqueid "fixed" :last { discard; }
if not duplicate :header "x-none" { fileinto "Misc"; }
